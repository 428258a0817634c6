# shoal runtime image.
#
# No image can be pulled where shoal is built, so this is not a multi-stage
# build: the static binary is built on the host first and the image holds
# nothing else.
#
#   make docker-image      # = make build-linux && docker build -t shoal:dev .
#   docker compose up      # or docker-compose up: the 3-node cluster
#
# build-linux runs CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -o
# bin/shoal-linux-amd64 . so the binary needs no libc.
FROM scratch

# /tmp and /data as directories owned by the unprivileged user; a named
# volume mounted on /data starts with this ownership.
COPY --chown=65532:65532 deploy/docker/rootfs/ /
COPY bin/shoal-linux-amd64 /shoal

USER 65532:65532
WORKDIR /data
ENV TMPDIR=/tmp
VOLUME ["/data"]

# 8080 HTTP API and metrics; 7946 gossip (TCP and UDP); 7947 Raft;
# 3320 Olric cache protocol and 3322 Olric's memberlist.
EXPOSE 8080 7946/tcp 7946/udp 7947 3320 3322

ENTRYPOINT ["/shoal"]
CMD ["node", "start", "--config", "/etc/shoal/cluster.hcl"]
