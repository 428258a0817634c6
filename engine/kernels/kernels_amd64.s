//go:build amd64 && !purego

#include "textflag.h"

// Every dot product keeps one 8-lane accumulator, reduced by HSUM in a fixed
// order, then adds the n%8 tail products one by one. All kernels below follow
// that scheme, so a dot product's bits do not depend on which kernel (batched
// or single row) computed it.

// HSUM reduces the eight lanes of y into the low lane of x (x is y's low
// half) as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), using t as scratch.
#define HSUM(y, x, t) \
	VEXTRACTF128 $1, y, t; \
	VADDPS       t, x, x; \
	VPERMILPS    $0x4E, x, t; \
	VADDPS       t, x, x; \
	VMOVSHDUP    x, t; \
	VADDSS       t, x, x

// func dotAVX2(a, b *float32, n int) float32
TEXT ·dotAVX2(SB), NOSPLIT, $0-28
	MOVQ   a+0(FP), SI
	MOVQ   b+8(FP), DI
	MOVQ   n+16(FP), CX
	MOVQ   CX, DX
	ANDQ   $-8, DX
	XORQ   AX, AX
	VXORPS Y0, Y0, Y0
	CMPQ   DX, $0
	JE     reduce

loop:
	VMOVUPS     (SI)(AX*4), Y1
	VFMADD231PS (DI)(AX*4), Y1, Y0
	ADDQ        $8, AX
	CMPQ        AX, DX
	JL          loop

reduce:
	HSUM(Y0, X0, X1)

tail:
	CMPQ        AX, CX
	JGE         done
	VMOVSS      (SI)(AX*4), X1
	VFMADD231SS (DI)(AX*4), X1, X0
	INCQ        AX
	JMP         tail

done:
	VZEROUPPER
	MOVSS X0, ret+24(FP)
	RET

// func axpyAVX2(y, x *float32, a float32, n int)
TEXT ·axpyAVX2(SB), NOSPLIT, $0-32
	MOVQ         y+0(FP), DI
	MOVQ         x+8(FP), SI
	VBROADCASTSS a+16(FP), Y0
	MOVQ         n+24(FP), CX
	MOVQ         CX, DX
	ANDQ         $-8, DX
	XORQ         AX, AX
	CMPQ         DX, $0
	JE           tail

loop:
	VMOVUPS     (DI)(AX*4), Y1
	VFMADD231PS (SI)(AX*4), Y0, Y1
	VMOVUPS     Y1, (DI)(AX*4)
	ADDQ        $8, AX
	CMPQ        AX, DX
	JL          loop

tail:
	CMPQ        AX, CX
	JGE         done
	VMOVSS      (DI)(AX*4), X1
	VFMADD231SS (SI)(AX*4), X0, X1
	VMOVSS      X1, (DI)(AX*4)
	INCQ        AX
	JMP         tail

done:
	VZEROUPPER
	RET

// func matmulX4AVX2(out *float32, ldo int, x *float32, ldx int, w *float32, n, rows, blocks, pf int)
// out[s*ldo+r] = dot(w[r*n:], x[s*ldx:]) for s < 4*blocks, r < rows. Two
// weight rows at a time (one at the end) against four activation rows
// (eight accumulators); each weight row pair is used for every group of four
// activation rows right after it is loaded, so weights stream from memory
// once and evenly, while the activations stay in cache. While working on a
// pair it prefetches the rows pf bytes further on.
TEXT ·matmulX4AVX2(SB), NOSPLIT, $16-72
	MOVQ out+0(FP), DI
	MOVQ ldo+8(FP), R8
	SHLQ $2, R8
	MOVQ w+32(FP), BX
	MOVQ n+40(FP), CX
	MOVQ CX, R13
	SHLQ $2, R13
	MOVQ CX, DX
	ANDQ $-8, DX
	MOVQ rows+48(FP), R14

pair:
	CMPQ R14, $2
	JL   single
	LEAQ (BX)(R13*1), R9
	MOVQ pf+64(FP), R15
	ADDQ BX, R15
	MOVQ x+16(FP), SI
	MOVQ DI, obase-8(SP)
	MOVQ blocks+56(FP), AX
	MOVQ AX, left-16(SP)

pairtile:
	MOVQ   ldx+24(FP), AX
	SHLQ   $2, AX
	LEAQ   (SI)(AX*1), R10
	LEAQ   (SI)(AX*2), R11
	LEAQ   (R10)(AX*2), R12
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	XORQ   AX, AX
	CMPQ   DX, $0
	JE     pairreduce

pairloop:
	// The rows pf bytes on (contiguous), one cache line per step.
	PREFETCHT0  (R15)(AX*8)
	VMOVUPS     (BX)(AX*4), Y8
	VMOVUPS     (R9)(AX*4), Y9
	VMOVUPS     (SI)(AX*4), Y10
	VFMADD231PS Y10, Y8, Y0
	VFMADD231PS Y10, Y9, Y4
	VMOVUPS     (R10)(AX*4), Y11
	VFMADD231PS Y11, Y8, Y1
	VFMADD231PS Y11, Y9, Y5
	VMOVUPS     (R11)(AX*4), Y12
	VFMADD231PS Y12, Y8, Y2
	VFMADD231PS Y12, Y9, Y6
	VMOVUPS     (R12)(AX*4), Y13
	VFMADD231PS Y13, Y8, Y3
	VFMADD231PS Y13, Y9, Y7
	ADDQ        $8, AX
	CMPQ        AX, DX
	JL          pairloop

pairreduce:
	HSUM(Y0, X0, X8)
	HSUM(Y1, X1, X8)
	HSUM(Y2, X2, X8)
	HSUM(Y3, X3, X8)
	HSUM(Y4, X4, X8)
	HSUM(Y5, X5, X8)
	HSUM(Y6, X6, X8)
	HSUM(Y7, X7, X8)

pairtail:
	CMPQ        AX, CX
	JGE         pairstore
	VMOVSS      (BX)(AX*4), X8
	VMOVSS      (R9)(AX*4), X9
	VFMADD231SS (SI)(AX*4), X8, X0
	VFMADD231SS (SI)(AX*4), X9, X4
	VFMADD231SS (R10)(AX*4), X8, X1
	VFMADD231SS (R10)(AX*4), X9, X5
	VFMADD231SS (R11)(AX*4), X8, X2
	VFMADD231SS (R11)(AX*4), X9, X6
	VFMADD231SS (R12)(AX*4), X8, X3
	VFMADD231SS (R12)(AX*4), X9, X7
	INCQ        AX
	JMP         pairtail

pairstore:
	LEAQ   (DI)(R8*2), AX
	VMOVSS X0, (DI)
	VMOVSS X1, (DI)(R8*1)
	VMOVSS X2, (DI)(R8*2)
	VMOVSS X3, (AX)(R8*1)
	VMOVSS X4, 4(DI)
	VMOVSS X5, 4(DI)(R8*1)
	VMOVSS X6, 4(DI)(R8*2)
	VMOVSS X7, 4(AX)(R8*1)
	// Next four activation rows: x += 4*ldx (R12 is row 3), out += 4*ldo.
	LEAQ   (DI)(R8*4), DI
	MOVQ   ldx+24(FP), AX
	SHLQ   $2, AX
	LEAQ   (R12)(AX*1), SI
	DECQ   left-16(SP)
	JNZ    pairtile
	MOVQ   obase-8(SP), DI
	ADDQ   $8, DI
	LEAQ   (BX)(R13*2), BX
	SUBQ   $2, R14
	JMP    pair

single:
	CMPQ R14, $0
	JE   done
	MOVQ x+16(FP), SI
	MOVQ blocks+56(FP), AX
	MOVQ AX, left-16(SP)

singletile:
	MOVQ   ldx+24(FP), AX
	SHLQ   $2, AX
	LEAQ   (SI)(AX*1), R10
	LEAQ   (SI)(AX*2), R11
	LEAQ   (R10)(AX*2), R12
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	CMPQ   DX, $0
	JE     singlereduce

singleloop:
	VMOVUPS     (BX)(AX*4), Y8
	VFMADD231PS (SI)(AX*4), Y8, Y0
	VFMADD231PS (R10)(AX*4), Y8, Y1
	VFMADD231PS (R11)(AX*4), Y8, Y2
	VFMADD231PS (R12)(AX*4), Y8, Y3
	ADDQ        $8, AX
	CMPQ        AX, DX
	JL          singleloop

singlereduce:
	HSUM(Y0, X0, X8)
	HSUM(Y1, X1, X8)
	HSUM(Y2, X2, X8)
	HSUM(Y3, X3, X8)

singletail:
	CMPQ        AX, CX
	JGE         singlestore
	VMOVSS      (BX)(AX*4), X8
	VFMADD231SS (SI)(AX*4), X8, X0
	VFMADD231SS (R10)(AX*4), X8, X1
	VFMADD231SS (R11)(AX*4), X8, X2
	VFMADD231SS (R12)(AX*4), X8, X3
	INCQ        AX
	JMP         singletail

singlestore:
	LEAQ   (DI)(R8*2), AX
	VMOVSS X0, (DI)
	VMOVSS X1, (DI)(R8*1)
	VMOVSS X2, (DI)(R8*2)
	VMOVSS X3, (AX)(R8*1)
	LEAQ   (DI)(R8*4), DI
	MOVQ   ldx+24(FP), AX
	SHLQ   $2, AX
	LEAQ   (R12)(AX*1), SI
	DECQ   left-16(SP)
	JNZ    singletile

done:
	VZEROUPPER
	RET

// func matmulX1AVX2(out *float32, x *float32, w *float32, n, rows int)
// out[r] = dot(w[r*n:], x) for r < rows; four weight rows at a time.
TEXT ·matmulX1AVX2(SB), NOSPLIT, $0-40
	MOVQ out+0(FP), DI
	MOVQ x+8(FP), SI
	MOVQ w+16(FP), BX
	MOVQ n+24(FP), CX
	MOVQ rows+32(FP), R14
	MOVQ CX, R13
	SHLQ $2, R13
	MOVQ CX, DX
	ANDQ $-8, DX

quad:
	CMPQ   R14, $4
	JL     single
	LEAQ   (BX)(R13*1), R9
	LEAQ   (BX)(R13*2), R10
	LEAQ   (R9)(R13*2), R11
	LEAQ   (BX)(R13*8), R12
	LEAQ   (R12)(R13*2), R15
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX
	CMPQ   DX, $0
	JE     quadreduce

quadloop:
	// Rows eight ahead, as two contiguous pairs, one line each per step.
	PREFETCHT0  (R12)(AX*8)
	PREFETCHT0  (R15)(AX*8)
	VMOVUPS     (SI)(AX*4), Y8
	VFMADD231PS (BX)(AX*4), Y8, Y0
	VFMADD231PS (R9)(AX*4), Y8, Y1
	VFMADD231PS (R10)(AX*4), Y8, Y2
	VFMADD231PS (R11)(AX*4), Y8, Y3
	ADDQ        $8, AX
	CMPQ        AX, DX
	JL          quadloop

quadreduce:
	HSUM(Y0, X0, X8)
	HSUM(Y1, X1, X8)
	HSUM(Y2, X2, X8)
	HSUM(Y3, X3, X8)

quadtail:
	CMPQ        AX, CX
	JGE         quadstore
	VMOVSS      (SI)(AX*4), X8
	VFMADD231SS (BX)(AX*4), X8, X0
	VFMADD231SS (R9)(AX*4), X8, X1
	VFMADD231SS (R10)(AX*4), X8, X2
	VFMADD231SS (R11)(AX*4), X8, X3
	INCQ        AX
	JMP         quadtail

quadstore:
	VMOVSS X0, (DI)
	VMOVSS X1, 4(DI)
	VMOVSS X2, 8(DI)
	VMOVSS X3, 12(DI)
	ADDQ   $16, DI
	LEAQ   (BX)(R13*4), BX
	SUBQ   $4, R14
	JMP    quad

single:
	CMPQ   R14, $0
	JE     done
	VXORPS Y0, Y0, Y0
	XORQ   AX, AX
	CMPQ   DX, $0
	JE     singlereduce

singleloop:
	VMOVUPS     (SI)(AX*4), Y8
	VFMADD231PS (BX)(AX*4), Y8, Y0
	ADDQ        $8, AX
	CMPQ        AX, DX
	JL          singleloop

singlereduce:
	HSUM(Y0, X0, X8)

singletail:
	CMPQ        AX, CX
	JGE         singlestore
	VMOVSS      (SI)(AX*4), X8
	VFMADD231SS (BX)(AX*4), X8, X0
	INCQ        AX
	JMP         singletail

singlestore:
	VMOVSS X0, (DI)
	ADDQ   $4, DI
	ADDQ   R13, BX
	DECQ   R14
	JMP    single

done:
	VZEROUPPER
	RET

// Q8 blocks are 36 bytes: the float32 scale at offset 0, then 32 int8.
// A group's products go through VPMADDUBSW, which multiplies unsigned by
// signed bytes: |a| times b carrying a's sign gives a*b, and with values in
// [-127, 127] the int16 pair sums cannot saturate. VPMADDWD against ones then
// leaves eight exact int32 lanes (lane j = elements 4j..4j+3), converted to
// float and accumulated with the product of the two scales.

// QDOT accumulates, into acc, the group of the row at (xr)(AX*1) against the
// weight group whose |w| is in Y9, w in Y8 and scale broadcast in Y10.
#define QDOT(xr, acc) \
	VMOVDQU      4(xr)(AX*1), Y11; \
	VPSIGNB      Y8, Y11, Y11; \
	VPMADDUBSW   Y11, Y9, Y11; \
	VPMADDWD     Y15, Y11, Y11; \
	VCVTDQ2PS    Y11, Y11; \
	VBROADCASTSS (xr)(AX*1), Y12; \
	VMULPS       Y10, Y12, Y12; \
	VFMADD231PS  Y12, Y11, acc

// func matmulQ8X4AVX2(out *float32, ldo int, x *Block, w *Block, groups, rows int)
// One weight row at a time against four activation rows.
TEXT ·matmulQ8X4AVX2(SB), NOSPLIT, $0-48
	MOVQ         out+0(FP), DI
	MOVQ         ldo+8(FP), R8
	SHLQ         $2, R8
	LEAQ         (R8)(R8*2), R15
	MOVQ         x+16(FP), SI
	MOVQ         w+24(FP), BX
	MOVQ         groups+32(FP), CX
	IMUL3Q       $36, CX, R13
	LEAQ         (SI)(R13*1), R10
	LEAQ         (SI)(R13*2), R11
	LEAQ         (R10)(R13*2), R12
	MOVQ         rows+40(FP), R14
	MOVQ         $0x0001000100010001, AX
	MOVQ         AX, X15
	VPBROADCASTQ X15, Y15

row:
	CMPQ   R14, $0
	JE     done
	LEAQ   (BX)(R13*2), R9
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX

group:
	PREFETCHT0   (R9)(AX*1)
	VMOVDQU      4(BX)(AX*1), Y8
	VPABSB       Y8, Y9
	VBROADCASTSS (BX)(AX*1), Y10
	QDOT(SI, Y0)
	QDOT(R10, Y1)
	QDOT(R11, Y2)
	QDOT(R12, Y3)
	ADDQ         $36, AX
	CMPQ         AX, R13
	JL           group

	HSUM(Y0, X0, X8)
	HSUM(Y1, X1, X8)
	HSUM(Y2, X2, X8)
	HSUM(Y3, X3, X8)
	VMOVSS X0, (DI)
	VMOVSS X1, (DI)(R8*1)
	VMOVSS X2, (DI)(R8*2)
	VMOVSS X3, (DI)(R15*1)
	ADDQ   $4, DI
	ADDQ   R13, BX
	DECQ   R14
	JMP    row

done:
	VZEROUPPER
	RET

// QROW accumulates, into acc, the weight group at (wr)(AX*1) against the
// activation group whose |x| is in Y9, x in Y8 and scale broadcast in Y10.
#define QROW(wr, acc, t, u) \
	VMOVDQU      4(wr)(AX*1), t; \
	VPSIGNB      Y8, t, t; \
	VPMADDUBSW   t, Y9, t; \
	VPMADDWD     Y15, t, t; \
	VCVTDQ2PS    t, t; \
	VBROADCASTSS (wr)(AX*1), u; \
	VMULPS       Y10, u, u; \
	VFMADD231PS  u, t, acc

// func matmulQ8X1AVX2(out *float32, x *Block, w *Block, groups, rows int)
// Four weight rows at a time against one activation row.
TEXT ·matmulQ8X1AVX2(SB), NOSPLIT, $0-40
	MOVQ         out+0(FP), DI
	MOVQ         x+8(FP), SI
	MOVQ         w+16(FP), BX
	MOVQ         groups+24(FP), CX
	IMUL3Q       $36, CX, R13
	MOVQ         rows+32(FP), R14
	MOVQ         $0x0001000100010001, AX
	MOVQ         AX, X15
	VPBROADCASTQ X15, Y15

quad:
	CMPQ   R14, $4
	JL     single
	LEAQ   (BX)(R13*1), R9
	LEAQ   (BX)(R13*2), R10
	LEAQ   (R9)(R13*2), R11
	LEAQ   (BX)(R13*8), R12
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	XORQ   AX, AX

quadgroup:
	// Rows eight ahead are contiguous: 4*36 bytes of them per group.
	PREFETCHT0   (R12)(AX*4)
	PREFETCHT0   64(R12)(AX*4)
	PREFETCHT0   128(R12)(AX*4)
	VMOVDQU      4(SI)(AX*1), Y8
	VPABSB       Y8, Y9
	VBROADCASTSS (SI)(AX*1), Y10
	QROW(BX, Y0, Y11, Y12)
	QROW(R9, Y1, Y13, Y14)
	QROW(R10, Y2, Y4, Y5)
	QROW(R11, Y3, Y6, Y7)
	ADDQ         $36, AX
	CMPQ         AX, R13
	JL           quadgroup

	HSUM(Y0, X0, X8)
	HSUM(Y1, X1, X8)
	HSUM(Y2, X2, X8)
	HSUM(Y3, X3, X8)
	VMOVSS X0, (DI)
	VMOVSS X1, 4(DI)
	VMOVSS X2, 8(DI)
	VMOVSS X3, 12(DI)
	ADDQ   $16, DI
	LEAQ   (BX)(R13*4), BX
	SUBQ   $4, R14
	JMP    quad

single:
	CMPQ   R14, $0
	JE     done
	VXORPS Y0, Y0, Y0
	XORQ   AX, AX

singlegroup:
	VMOVDQU      4(SI)(AX*1), Y8
	VPABSB       Y8, Y9
	VBROADCASTSS (SI)(AX*1), Y10
	QROW(BX, Y0, Y11, Y12)
	ADDQ         $36, AX
	CMPQ         AX, R13
	JL           singlegroup

	HSUM(Y0, X0, X8)
	VMOVSS X0, (DI)
	ADDQ   $4, DI
	ADDQ   R13, BX
	DECQ   R14
	JMP    single

done:
	VZEROUPPER
	RET

// func axpyRowsAVX2(y *float32, n int, a *float32, rows int, x *float32, ldx int)
// y[i] += a[0]*x[i] + a[1]*x[ldx+i] + ... in row order, 32 columns at a
// time (four independent accumulators), then 8, then one.
TEXT ·axpyRowsAVX2(SB), NOSPLIT, $0-48
	MOVQ y+0(FP), DI
	MOVQ n+8(FP), CX
	MOVQ a+16(FP), SI
	MOVQ rows+24(FP), R8
	MOVQ x+32(FP), BX
	MOVQ ldx+40(FP), R9
	SHLQ $2, R9
	XORQ AX, AX

blk32:
	LEAQ    32(AX), DX
	CMPQ    DX, CX
	JG      blk8
	VMOVUPS (DI)(AX*4), Y0
	VMOVUPS 32(DI)(AX*4), Y1
	VMOVUPS 64(DI)(AX*4), Y2
	VMOVUPS 96(DI)(AX*4), Y3
	LEAQ    (BX)(AX*4), R10
	XORQ    R11, R11

row32:
	VBROADCASTSS (SI)(R11*4), Y4
	VFMADD231PS  (R10), Y4, Y0
	VFMADD231PS  32(R10), Y4, Y1
	VFMADD231PS  64(R10), Y4, Y2
	VFMADD231PS  96(R10), Y4, Y3
	ADDQ         R9, R10
	INCQ         R11
	CMPQ         R11, R8
	JL           row32
	VMOVUPS      Y0, (DI)(AX*4)
	VMOVUPS      Y1, 32(DI)(AX*4)
	VMOVUPS      Y2, 64(DI)(AX*4)
	VMOVUPS      Y3, 96(DI)(AX*4)
	MOVQ         DX, AX
	JMP          blk32

blk8:
	LEAQ    8(AX), DX
	CMPQ    DX, CX
	JG      tail
	VMOVUPS (DI)(AX*4), Y0
	LEAQ    (BX)(AX*4), R10
	XORQ    R11, R11

row8:
	VBROADCASTSS (SI)(R11*4), Y4
	VFMADD231PS  (R10), Y4, Y0
	ADDQ         R9, R10
	INCQ         R11
	CMPQ         R11, R8
	JL           row8
	VMOVUPS      Y0, (DI)(AX*4)
	MOVQ         DX, AX
	JMP          blk8

tail:
	CMPQ   AX, CX
	JGE    done
	VMOVSS (DI)(AX*4), X0
	LEAQ   (BX)(AX*4), R10
	XORQ   R11, R11

row1:
	VMOVSS      (SI)(R11*4), X4
	VFMADD231SS (R10), X4, X0
	ADDQ        R9, R10
	INCQ        R11
	CMPQ        R11, R8
	JL          row1
	VMOVSS      X0, (DI)(AX*4)
	INCQ        AX
	JMP         tail

done:
	VZEROUPPER
	RET

// Constants of the vector exp, each repeated in eight lanes so packed
// instructions can take them straight from memory.
DATA expc<>+0(SB)/4, $0x3fb8aa3b  // log2(e)
DATA expc<>+4(SB)/4, $0x3fb8aa3b
DATA expc<>+8(SB)/4, $0x3fb8aa3b
DATA expc<>+12(SB)/4, $0x3fb8aa3b
DATA expc<>+16(SB)/4, $0x3fb8aa3b
DATA expc<>+20(SB)/4, $0x3fb8aa3b
DATA expc<>+24(SB)/4, $0x3fb8aa3b
DATA expc<>+28(SB)/4, $0x3fb8aa3b
DATA expc<>+32(SB)/4, $0x3f000000  // 0.5
DATA expc<>+36(SB)/4, $0x3f000000
DATA expc<>+40(SB)/4, $0x3f000000
DATA expc<>+44(SB)/4, $0x3f000000
DATA expc<>+48(SB)/4, $0x3f000000
DATA expc<>+52(SB)/4, $0x3f000000
DATA expc<>+56(SB)/4, $0x3f000000
DATA expc<>+60(SB)/4, $0x3f000000
DATA expc<>+64(SB)/4, $0x3f318000  // ln2 high: 0.693359375
DATA expc<>+68(SB)/4, $0x3f318000
DATA expc<>+72(SB)/4, $0x3f318000
DATA expc<>+76(SB)/4, $0x3f318000
DATA expc<>+80(SB)/4, $0x3f318000
DATA expc<>+84(SB)/4, $0x3f318000
DATA expc<>+88(SB)/4, $0x3f318000
DATA expc<>+92(SB)/4, $0x3f318000
DATA expc<>+96(SB)/4, $0xb95e8083  // ln2 low: -2.12194440e-4
DATA expc<>+100(SB)/4, $0xb95e8083
DATA expc<>+104(SB)/4, $0xb95e8083
DATA expc<>+108(SB)/4, $0xb95e8083
DATA expc<>+112(SB)/4, $0xb95e8083
DATA expc<>+116(SB)/4, $0xb95e8083
DATA expc<>+120(SB)/4, $0xb95e8083
DATA expc<>+124(SB)/4, $0xb95e8083
DATA expc<>+128(SB)/4, $0x39506967  // 1.9875691500e-4
DATA expc<>+132(SB)/4, $0x39506967
DATA expc<>+136(SB)/4, $0x39506967
DATA expc<>+140(SB)/4, $0x39506967
DATA expc<>+144(SB)/4, $0x39506967
DATA expc<>+148(SB)/4, $0x39506967
DATA expc<>+152(SB)/4, $0x39506967
DATA expc<>+156(SB)/4, $0x39506967
DATA expc<>+160(SB)/4, $0x3ab743ce  // 1.3981999507e-3
DATA expc<>+164(SB)/4, $0x3ab743ce
DATA expc<>+168(SB)/4, $0x3ab743ce
DATA expc<>+172(SB)/4, $0x3ab743ce
DATA expc<>+176(SB)/4, $0x3ab743ce
DATA expc<>+180(SB)/4, $0x3ab743ce
DATA expc<>+184(SB)/4, $0x3ab743ce
DATA expc<>+188(SB)/4, $0x3ab743ce
DATA expc<>+192(SB)/4, $0x3c088908  // 8.3334519073e-3
DATA expc<>+196(SB)/4, $0x3c088908
DATA expc<>+200(SB)/4, $0x3c088908
DATA expc<>+204(SB)/4, $0x3c088908
DATA expc<>+208(SB)/4, $0x3c088908
DATA expc<>+212(SB)/4, $0x3c088908
DATA expc<>+216(SB)/4, $0x3c088908
DATA expc<>+220(SB)/4, $0x3c088908
DATA expc<>+224(SB)/4, $0x3d2aa9c1  // 4.1665795894e-2
DATA expc<>+228(SB)/4, $0x3d2aa9c1
DATA expc<>+232(SB)/4, $0x3d2aa9c1
DATA expc<>+236(SB)/4, $0x3d2aa9c1
DATA expc<>+240(SB)/4, $0x3d2aa9c1
DATA expc<>+244(SB)/4, $0x3d2aa9c1
DATA expc<>+248(SB)/4, $0x3d2aa9c1
DATA expc<>+252(SB)/4, $0x3d2aa9c1
DATA expc<>+256(SB)/4, $0x3e2aaaaa  // 1.6666665459e-1
DATA expc<>+260(SB)/4, $0x3e2aaaaa
DATA expc<>+264(SB)/4, $0x3e2aaaaa
DATA expc<>+268(SB)/4, $0x3e2aaaaa
DATA expc<>+272(SB)/4, $0x3e2aaaaa
DATA expc<>+276(SB)/4, $0x3e2aaaaa
DATA expc<>+280(SB)/4, $0x3e2aaaaa
DATA expc<>+284(SB)/4, $0x3e2aaaaa
DATA expc<>+288(SB)/4, $0x3f000000  // 5.0000001201e-1
DATA expc<>+292(SB)/4, $0x3f000000
DATA expc<>+296(SB)/4, $0x3f000000
DATA expc<>+300(SB)/4, $0x3f000000
DATA expc<>+304(SB)/4, $0x3f000000
DATA expc<>+308(SB)/4, $0x3f000000
DATA expc<>+312(SB)/4, $0x3f000000
DATA expc<>+316(SB)/4, $0x3f000000
DATA expc<>+320(SB)/4, $0x3f800000  // 1
DATA expc<>+324(SB)/4, $0x3f800000
DATA expc<>+328(SB)/4, $0x3f800000
DATA expc<>+332(SB)/4, $0x3f800000
DATA expc<>+336(SB)/4, $0x3f800000
DATA expc<>+340(SB)/4, $0x3f800000
DATA expc<>+344(SB)/4, $0x3f800000
DATA expc<>+348(SB)/4, $0x3f800000
DATA expc<>+352(SB)/4, $0xc2ae0000  // -87
DATA expc<>+356(SB)/4, $0xc2ae0000
DATA expc<>+360(SB)/4, $0xc2ae0000
DATA expc<>+364(SB)/4, $0xc2ae0000
DATA expc<>+368(SB)/4, $0xc2ae0000
DATA expc<>+372(SB)/4, $0xc2ae0000
DATA expc<>+376(SB)/4, $0xc2ae0000
DATA expc<>+380(SB)/4, $0xc2ae0000
DATA expc<>+384(SB)/4, $0x42b00000  // 88
DATA expc<>+388(SB)/4, $0x42b00000
DATA expc<>+392(SB)/4, $0x42b00000
DATA expc<>+396(SB)/4, $0x42b00000
DATA expc<>+400(SB)/4, $0x42b00000
DATA expc<>+404(SB)/4, $0x42b00000
DATA expc<>+408(SB)/4, $0x42b00000
DATA expc<>+412(SB)/4, $0x42b00000
DATA expc<>+416(SB)/4, $0x0000007f  // 127 (int)
DATA expc<>+420(SB)/4, $0x0000007f
DATA expc<>+424(SB)/4, $0x0000007f
DATA expc<>+428(SB)/4, $0x0000007f
DATA expc<>+432(SB)/4, $0x0000007f
DATA expc<>+436(SB)/4, $0x0000007f
DATA expc<>+440(SB)/4, $0x0000007f
DATA expc<>+444(SB)/4, $0x0000007f
GLOBL expc<>(SB), RODATA|NOPTR, $448

// VEXP sets y = e^y for eight lanes as Expf does (clamped to [-87, 88],
// where callers' inputs live: softmax arguments are <= 0 and saturate to 0
// well before -87). t1 and t2 are scratch.
#define VEXP(y, t1, t2) \
	VMAXPS       expc<>+352(SB), y, y; \
	VMINPS       expc<>+384(SB), y, y; \
	VBROADCASTSS expc<>+0(SB), t1; \
	VBROADCASTSS expc<>+32(SB), t2; \
	VFMADD213PS  t2, y, t1; \
	VROUNDPS     $1, t1, t1; \
	VBROADCASTSS expc<>+64(SB), t2; \
	VFNMADD231PS t2, t1, y; \
	VBROADCASTSS expc<>+96(SB), t2; \
	VFNMADD231PS t2, t1, y; \
	VCVTPS2DQ    t1, t1; \
	VPBROADCASTD expc<>+416(SB), t2; \
	VPADDD       t2, t1, t1; \
	VPSLLD       $23, t1, t1; \
	VBROADCASTSS expc<>+128(SB), t2; \
	VFMADD213PS  expc<>+160(SB), y, t2; \
	VFMADD213PS  expc<>+192(SB), y, t2; \
	VFMADD213PS  expc<>+224(SB), y, t2; \
	VFMADD213PS  expc<>+256(SB), y, t2; \
	VFMADD213PS  expc<>+288(SB), y, t2; \
	VMULPS       y, t2, t2; \
	VFMADD213PS  expc<>+320(SB), y, t2; \
	VADDPS       t2, y, y; \
	VMULPS       t1, y, y

// func expSumAVX2(dst, src *float32, n int, shift float32) float32
// n is a multiple of 8.
TEXT ·expSumAVX2(SB), NOSPLIT, $0-36
	MOVQ         dst+0(FP), DI
	MOVQ         src+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS shift+24(FP), Y5
	VXORPS       Y0, Y0, Y0
	XORQ         AX, AX

loop:
	VMOVUPS (SI)(AX*4), Y1
	VSUBPS  Y5, Y1, Y1
	VEXP(Y1, Y2, Y3)
	VMOVUPS Y1, (DI)(AX*4)
	VADDPS  Y1, Y0, Y0
	ADDQ    $8, AX
	CMPQ    AX, CX
	JL      loop

	HSUM(Y0, X0, X1)
	VZEROUPPER
	MOVSS X0, ret+32(FP)
	RET

// func siluMulAVX2(h, gate *float32, n int)
// n is a multiple of 8.
TEXT ·siluMulAVX2(SB), NOSPLIT, $0-24
	MOVQ         h+0(FP), DI
	MOVQ         gate+8(FP), SI
	MOVQ         n+16(FP), CX
	VBROADCASTSS expc<>+320(SB), Y6
	VXORPS       Y7, Y7, Y7
	XORQ         AX, AX

loop:
	VMOVUPS (DI)(AX*4), Y0
	VSUBPS  Y0, Y7, Y1
	VEXP(Y1, Y2, Y3)
	VADDPS  Y6, Y1, Y1
	VDIVPS  Y1, Y6, Y1
	VMULPS  Y1, Y0, Y0
	VMULPS  (SI)(AX*4), Y0, Y0
	VMOVUPS Y0, (DI)(AX*4)
	ADDQ    $8, AX
	CMPQ    AX, CX
	JL      loop

	VZEROUPPER
	RET

// HSUMZ is HSUM for registers only EVEX can name (X16-X31): the same
// additions in the same order, so its sums are bit-identical to HSUM's.
#define HSUMZ(y, x, t) \
	VEXTRACTF32X4 $1, y, t; \
	VADDPS        t, x, x; \
	VPERMILPS     $0x4E, x, t; \
	VADDPS        t, x, x; \
	VMOVSHDUP     x, t; \
	VADDSS        t, x, x

// func matmulX8AVX512(out *float32, ldo int, x *float32, ldx int, w *float32, n, rows, blocks int)
// out[s*ldo+r] = dot(w[r*n:], x[s*ldx:]) for s < 8*blocks, r < rows, rows a
// multiple of four and blocks > 0. Each 512-bit accumulator holds two dot
// products side by side: weight row r in the low 256 bits and row r+1 in the
// high 256, against one activation row broadcast to both halves. So every
// lane does the same fused multiply-adds, in the same order, as the 8-lane
// AVX2 kernels, and the results are bit-identical to theirs, while one FMA
// does the work of two. Four weight rows (two pairs) meet eight activation
// rows: 16 accumulators in Z0-Z15, the weight pairs in Z16/Z17 and the
// broadcast activations in Z18/Z19. A weight quad is used for every group of
// eight activation rows right after it is loaded, so weights stream from
// memory once while the activations stay in cache; meanwhile the next quad
// (contiguous, 4n floats) is prefetched, two cache lines per step. AX is a
// byte offset so that AX*4 spans the next quad while AX spans one row. The
// upper halves of Z16-Z31 cause no SSE transition penalty, so the
// VZEROUPPER at the end suffices.
TEXT ·matmulX8AVX512(SB), NOSPLIT, $64-64
	MOVQ w+32(FP), AX
	MOVQ AX, wq-8(SP)
	MOVQ out+0(FP), AX
	MOVQ AX, oq-16(SP)
	MOVQ rows+48(FP), AX
	MOVQ AX, rl-48(SP)
	MOVQ n+40(FP), AX
	SHLQ $2, AX
	MOVQ AX, nb-64(SP)
	ANDQ $-32, AX
	MOVQ AX, lim-56(SP)

x8quad:
	CMPQ rl-48(SP), $4
	JL   x8done
	MOVQ x+16(FP), AX
	MOVQ AX, xt-24(SP)
	MOVQ oq-16(SP), AX
	MOVQ AX, ot-32(SP)
	MOVQ blocks+56(FP), AX
	MOVQ AX, left-40(SP)

x8tile:
	MOVQ ldx+24(FP), DX
	SHLQ $2, DX
	MOVQ xt-24(SP), SI
	LEAQ (SI)(DX*1), DI
	LEAQ (SI)(DX*2), R8
	LEAQ (DI)(DX*2), R12
	LEAQ (R8)(DX*2), R13
	LEAQ (R12)(DX*2), R14
	LEAQ (R13)(DX*2), R15
	LEAQ (R14)(DX*2), CX
	MOVQ nb-64(SP), DX
	MOVQ wq-8(SP), BX
	LEAQ (BX)(DX*1), R9
	LEAQ (BX)(DX*2), R10
	LEAQ (R9)(DX*2), R11
	LEAQ (BX)(DX*4), DX
	VXORPS Y0, Y0, Y0
	VXORPS Y1, Y1, Y1
	VXORPS Y2, Y2, Y2
	VXORPS Y3, Y3, Y3
	VXORPS Y4, Y4, Y4
	VXORPS Y5, Y5, Y5
	VXORPS Y6, Y6, Y6
	VXORPS Y7, Y7, Y7
	VXORPS Y8, Y8, Y8
	VXORPS Y9, Y9, Y9
	VXORPS Y10, Y10, Y10
	VXORPS Y11, Y11, Y11
	VXORPS Y12, Y12, Y12
	VXORPS Y13, Y13, Y13
	VXORPS Y14, Y14, Y14
	VXORPS Y15, Y15, Y15
	XORQ   AX, AX
	CMPQ   lim-56(SP), $0
	JE     x8reduce

x8loop:
	PREFETCHT0      (DX)(AX*4)
	PREFETCHT0      64(DX)(AX*4)
	VMOVUPS         (BX)(AX*1), Y16
	VINSERTF64X4    $1, (R9)(AX*1), Z16, Z16
	VMOVUPS         (R10)(AX*1), Y17
	VINSERTF64X4    $1, (R11)(AX*1), Z17, Z17
	VBROADCASTF64X4 (SI)(AX*1), Z18
	VFMADD231PS     Z18, Z16, Z0
	VFMADD231PS     Z18, Z17, Z8
	VBROADCASTF64X4 (DI)(AX*1), Z19
	VFMADD231PS     Z19, Z16, Z1
	VFMADD231PS     Z19, Z17, Z9
	VBROADCASTF64X4 (R8)(AX*1), Z18
	VFMADD231PS     Z18, Z16, Z2
	VFMADD231PS     Z18, Z17, Z10
	VBROADCASTF64X4 (R12)(AX*1), Z19
	VFMADD231PS     Z19, Z16, Z3
	VFMADD231PS     Z19, Z17, Z11
	VBROADCASTF64X4 (R13)(AX*1), Z18
	VFMADD231PS     Z18, Z16, Z4
	VFMADD231PS     Z18, Z17, Z12
	VBROADCASTF64X4 (R14)(AX*1), Z19
	VFMADD231PS     Z19, Z16, Z5
	VFMADD231PS     Z19, Z17, Z13
	VBROADCASTF64X4 (R15)(AX*1), Z18
	VFMADD231PS     Z18, Z16, Z6
	VFMADD231PS     Z18, Z17, Z14
	VBROADCASTF64X4 (CX)(AX*1), Z19
	VFMADD231PS     Z19, Z16, Z7
	VFMADD231PS     Z19, Z17, Z15
	ADDQ            $32, AX
	CMPQ            AX, lim-56(SP)
	JL              x8loop

x8reduce:
	// Weight rows r, r+1: low halves to X0-X7, high halves to X20-X27.
	VEXTRACTF64X4 $1, Z0, Y20
	VEXTRACTF64X4 $1, Z1, Y21
	VEXTRACTF64X4 $1, Z2, Y22
	VEXTRACTF64X4 $1, Z3, Y23
	VEXTRACTF64X4 $1, Z4, Y24
	VEXTRACTF64X4 $1, Z5, Y25
	VEXTRACTF64X4 $1, Z6, Y26
	VEXTRACTF64X4 $1, Z7, Y27
	HSUMZ(Y0, X0, X28)
	HSUMZ(Y1, X1, X28)
	HSUMZ(Y2, X2, X28)
	HSUMZ(Y3, X3, X28)
	HSUMZ(Y4, X4, X28)
	HSUMZ(Y5, X5, X28)
	HSUMZ(Y6, X6, X28)
	HSUMZ(Y7, X7, X28)
	HSUMZ(Y20, X20, X28)
	HSUMZ(Y21, X21, X28)
	HSUMZ(Y22, X22, X28)
	HSUMZ(Y23, X23, X28)
	HSUMZ(Y24, X24, X28)
	HSUMZ(Y25, X25, X28)
	HSUMZ(Y26, X26, X28)
	HSUMZ(Y27, X27, X28)

x8tailA:
	CMPQ   AX, nb-64(SP)
	JGE    x8storeA
	VMOVSS (BX)(AX*1), X16
	VMOVSS (R9)(AX*1), X17
	VFMADD231SS (SI)(AX*1), X16, X0
	VFMADD231SS (SI)(AX*1), X17, X20
	VFMADD231SS (DI)(AX*1), X16, X1
	VFMADD231SS (DI)(AX*1), X17, X21
	VFMADD231SS (R8)(AX*1), X16, X2
	VFMADD231SS (R8)(AX*1), X17, X22
	VFMADD231SS (R12)(AX*1), X16, X3
	VFMADD231SS (R12)(AX*1), X17, X23
	VFMADD231SS (R13)(AX*1), X16, X4
	VFMADD231SS (R13)(AX*1), X17, X24
	VFMADD231SS (R14)(AX*1), X16, X5
	VFMADD231SS (R14)(AX*1), X17, X25
	VFMADD231SS (R15)(AX*1), X16, X6
	VFMADD231SS (R15)(AX*1), X17, X26
	VFMADD231SS (CX)(AX*1), X16, X7
	VFMADD231SS (CX)(AX*1), X17, X27
	ADDQ   $4, AX
	JMP    x8tailA

x8storeA:
	// BX and R9 are free once the first pair's tail is done.
	MOVQ ot-32(SP), BX
	MOVQ ldo+8(FP), R9
	SHLQ $2, R9
	VMOVSS X0, (BX)
	VMOVSS X20, 4(BX)
	ADDQ   R9, BX
	VMOVSS X1, (BX)
	VMOVSS X21, 4(BX)
	ADDQ   R9, BX
	VMOVSS X2, (BX)
	VMOVSS X22, 4(BX)
	ADDQ   R9, BX
	VMOVSS X3, (BX)
	VMOVSS X23, 4(BX)
	ADDQ   R9, BX
	VMOVSS X4, (BX)
	VMOVSS X24, 4(BX)
	ADDQ   R9, BX
	VMOVSS X5, (BX)
	VMOVSS X25, 4(BX)
	ADDQ   R9, BX
	VMOVSS X6, (BX)
	VMOVSS X26, 4(BX)
	ADDQ   R9, BX
	VMOVSS X7, (BX)
	VMOVSS X27, 4(BX)
	// Weight rows r+2, r+3: low halves to X8-X15, high halves to X20-X27.
	MOVQ lim-56(SP), AX
	VEXTRACTF64X4 $1, Z8, Y20
	VEXTRACTF64X4 $1, Z9, Y21
	VEXTRACTF64X4 $1, Z10, Y22
	VEXTRACTF64X4 $1, Z11, Y23
	VEXTRACTF64X4 $1, Z12, Y24
	VEXTRACTF64X4 $1, Z13, Y25
	VEXTRACTF64X4 $1, Z14, Y26
	VEXTRACTF64X4 $1, Z15, Y27
	HSUMZ(Y8, X8, X28)
	HSUMZ(Y9, X9, X28)
	HSUMZ(Y10, X10, X28)
	HSUMZ(Y11, X11, X28)
	HSUMZ(Y12, X12, X28)
	HSUMZ(Y13, X13, X28)
	HSUMZ(Y14, X14, X28)
	HSUMZ(Y15, X15, X28)
	HSUMZ(Y20, X20, X28)
	HSUMZ(Y21, X21, X28)
	HSUMZ(Y22, X22, X28)
	HSUMZ(Y23, X23, X28)
	HSUMZ(Y24, X24, X28)
	HSUMZ(Y25, X25, X28)
	HSUMZ(Y26, X26, X28)
	HSUMZ(Y27, X27, X28)

x8tailB:
	CMPQ   AX, nb-64(SP)
	JGE    x8storeB
	VMOVSS (R10)(AX*1), X16
	VMOVSS (R11)(AX*1), X17
	VFMADD231SS (SI)(AX*1), X16, X8
	VFMADD231SS (SI)(AX*1), X17, X20
	VFMADD231SS (DI)(AX*1), X16, X9
	VFMADD231SS (DI)(AX*1), X17, X21
	VFMADD231SS (R8)(AX*1), X16, X10
	VFMADD231SS (R8)(AX*1), X17, X22
	VFMADD231SS (R12)(AX*1), X16, X11
	VFMADD231SS (R12)(AX*1), X17, X23
	VFMADD231SS (R13)(AX*1), X16, X12
	VFMADD231SS (R13)(AX*1), X17, X24
	VFMADD231SS (R14)(AX*1), X16, X13
	VFMADD231SS (R14)(AX*1), X17, X25
	VFMADD231SS (R15)(AX*1), X16, X14
	VFMADD231SS (R15)(AX*1), X17, X26
	VFMADD231SS (CX)(AX*1), X16, X15
	VFMADD231SS (CX)(AX*1), X17, X27
	ADDQ   $4, AX
	JMP    x8tailB

x8storeB:
	MOVQ ot-32(SP), BX
	VMOVSS X8, 8(BX)
	VMOVSS X20, 12(BX)
	ADDQ   R9, BX
	VMOVSS X9, 8(BX)
	VMOVSS X21, 12(BX)
	ADDQ   R9, BX
	VMOVSS X10, 8(BX)
	VMOVSS X22, 12(BX)
	ADDQ   R9, BX
	VMOVSS X11, 8(BX)
	VMOVSS X23, 12(BX)
	ADDQ   R9, BX
	VMOVSS X12, 8(BX)
	VMOVSS X24, 12(BX)
	ADDQ   R9, BX
	VMOVSS X13, 8(BX)
	VMOVSS X25, 12(BX)
	ADDQ   R9, BX
	VMOVSS X14, 8(BX)
	VMOVSS X26, 12(BX)
	ADDQ   R9, BX
	VMOVSS X15, 8(BX)
	VMOVSS X27, 12(BX)
	ADDQ   R9, BX
	// Next eight activation rows: x += 8*ldx (CX is row 7), out += 8*ldo.
	MOVQ BX, ot-32(SP)
	MOVQ ldx+24(FP), AX
	SHLQ $2, AX
	ADDQ CX, AX
	MOVQ AX, xt-24(SP)
	DECQ left-40(SP)
	JNZ  x8tile
	// Next four weight rows and output columns.
	MOVQ nb-64(SP), AX
	SHLQ $2, AX
	ADDQ AX, wq-8(SP)
	ADDQ $16, oq-16(SP)
	SUBQ $4, rl-48(SP)
	JMP  x8quad

x8done:
	VZEROUPPER
	RET
