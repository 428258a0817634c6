package engine

// defaultWords are the built-in model's vocabulary, most frequent first:
// common English words of simple stories. Frequency rank shapes the output
// layer's preference, so common words appear most often.
const defaultWords = `
the and a to was he she it they of in his her said you with on that i
for but one day had is not so were at up were then big little very what
there all be saw we him them this time once upon mom like went play
happy could see friend wanted would do are have can from out help
about get no go will back too when did their made just your me my
looked new felt other into fun say tree toy found ball dog cat girl
boy named lily tim ben sue sam max mia ted anna jack lucy tom sara
park home sun sky water bird fish house room bed car box hat shoe
red blue green yellow pink big small tall long short good bad nice
kind sad mad scared brave funny pretty shiny soft hard warm cold
wet dry fast slow loud quiet old young best more most some many
every each any only also now again away down over under around
after before while because if how why who where which than as an
or by our us things thing something nothing everything someone
together alone always never sometimes today tomorrow night morning
run ran jump jumped walk walked talk talked look see seen find
play played eat ate drink sleep slept sing sang dance danced laugh
laughed cry cried smile smiled hug hugged give gave take took make
come came know knew think thought want need love loved like liked
feel share shared clean cleaned cook cooked read draw drew paint
build built fly flew swim swam climb climbed open opened close closed
push pulled pull hold held throw threw catch caught kick kicked
tell told ask asked answer answered call called hear heard listen
watch watched wait waited stop stopped start started try tried
learn learned teach taught remember forgot forget visit visited
bring brought carry carried keep kept put sit sat stand stood
hide hid seek found lost win won fall fell break broke fix fixed
grow grew bake baked pick picked plant planted wash washed
mommy daddy dad mother father sister brother baby grandma grandpa
family friends teacher school garden forest river lake sea beach
hill mountain road street town city farm zoo shop store castle
cake cookie apple banana milk bread candy soup pie juice egg
flower flowers grass leaf leaves rock rocks stick sticks sand snow rain
wind cloud clouds star stars moon light dark day days year
animal animals bunny bear lion tiger monkey duck frog mouse horse cow
pig sheep puppy kitten dragon princess king queen prince fairy
monster robot train truck boat plane bike kite balloon doll
book books picture game games song songs story stories idea ideas
door window table chair cup plate bag basket bowl spoon hole
head hand hands eyes face feet arms legs nose mouth ears hair heart
surprise gift present party birthday lunch dinner breakfast
job lesson fun way place world sound noise color colors shape
first last next other same different special important careful
excited proud tired hungry thirsty sleepy curious friendly gentle
strong smart silly safe lucky busy ready sorry sure afraid
beautiful wonderful amazing great huge tiny fluffy sparkly
yes oh wow hello goodbye please thank thanks okay
did does doing done going getting having saying seeing playing
running jumping looking walking eating sleeping smiling laughing
crying singing dancing flying swimming climbing reading helping
because until through across behind inside outside near far
here there up down off on in out again still even just really
very much lots lot little bit all both few own whole
two three four five ten hundred
then soon later finally suddenly quickly slowly happily sadly
loudly quietly carefully gently
is am are was were be been being has have had do does did
can could will would should may might must shall
i you he she it we they me him her us them my your his its our their
mine yours this that these those who what which whose whom
`

// defaultCapitalised are words that also get a capitalised form, for the
// start of sentences and names.
const defaultCapitalised = `
the once one she he they it then lily tim ben sue sam max mia ted anna
jack lucy tom sara mom dad mommy daddy i but when so after one every
there what why how we you her his that this today finally suddenly
`
