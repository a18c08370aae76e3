#!/usr/bin/env node
// Reference token ids from the npm package gpt-3-encoder, for comparing the C++ tokenizer.
//
//   node cmake/encode-reference.js GPT3_ENCODER_DIR LIST_FILE OUT_FILE
//
// LIST_FILE holds one path per line, each a UTF-8 text file. Every file is encoded with
// GPT3_ENCODER_DIR/Encoder.js and OUT_FILE receives, as little-endian 32-bit integers: the
// number of files, then for each file its token count followed by its token ids.
'use strict';

const fs = require('fs');
const path = require('path');

function fail(message) {
  process.stderr.write(`encode-reference.js: ${message}\n`);
  process.exit(1);
}

if (process.argv.length !== 5) {
  fail('usage: node encode-reference.js GPT3_ENCODER_DIR LIST_FILE OUT_FILE');
}
const [encoderDir, listFile, outFile] = process.argv.slice(2);

let encode;
try {
  ({ encode } = require(path.resolve(encoderDir, 'Encoder.js')));
} catch (e) {
  fail(`cannot load ${path.join(encoderDir, 'Encoder.js')}: ${e.message}`);
}

const files = fs.readFileSync(listFile, 'utf8').split('\n').filter((line) => line.length > 0);
const chunks = [];
const header = Buffer.alloc(4);
header.writeInt32LE(files.length, 0);
chunks.push(header);
for (const file of files) {
  const ids = encode(fs.readFileSync(file, 'utf8'));
  const buffer = Buffer.alloc(4 * (ids.length + 1));
  buffer.writeInt32LE(ids.length, 0);
  ids.forEach((id, i) => {
    if (!Number.isInteger(id)) fail(`${file}: Encoder.js produced a non-integer id (${id})`);
    buffer.writeInt32LE(id, 4 * (i + 1));
  });
  chunks.push(buffer);
}
fs.writeFileSync(outFile, Buffer.concat(chunks));
