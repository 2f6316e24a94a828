// Validates AsyncAPI documents with the AsyncAPI initiative's own parser (@asyncapi/parser): the
// AsyncAPI 3 JSON Schema, references, and the parser's own rules.
//   node validate.mjs ../../contracts/asyncapi.json [more.json ...]
// Prints one JSON line per document, {"path", "errors": [...], "warnings": [...], "summary"}; exits 1
// when any document has an error.
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const paths = process.argv.slice(2);
if (paths.length === 0) {
  console.error('usage: node validate.mjs <asyncapi document> ...');
  process.exit(2);
}
const parser = new Parser();
const shown = (d) => ({ code: d.code, message: d.message, path: d.path.join('.') });
let failed = false;
for (const path of paths) {
  const { document, diagnostics } = await parser.parse(readFileSync(path, 'utf8'), { source: path });
  const errors = diagnostics.filter((d) => d.severity === 0).map(shown);
  const warnings = diagnostics.filter((d) => d.severity === 1).map(shown);
  if (!document && errors.length === 0) errors.push({ code: 'unparsed', message: 'no document', path: '' });
  const summary = document ? { version: document.version(), channels: document.channels().length,
    messages: document.allMessages().length, operations: document.operations().length } : null;
  console.log(JSON.stringify({ path, errors, warnings, summary }));
  failed ||= errors.length > 0;
}
process.exit(failed ? 1 : 0);
