// The client's types are checked against the service's own OpenAPI document: each field
// an interface of src/index.ts declares is a property of the schema it mirrors, and the
// other way round, so a field added to or renamed in the contract fails here until the
// client says it too.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { Server } from './support.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const source = readFileSync(path.join(here, '..', 'src', 'index.ts'), 'utf8');

/** The field names `interface name { … }` declares in src/index.ts. */
function fieldsOf(name) {
  const body = new RegExp(`export interface ${name} \\{\\n([\\s\\S]*?)\\n\\}`).exec(source);
  assert.ok(body, `src/index.ts declares interface ${name}`);
  return [...body[1].matchAll(/^ {2}(\w+)\??:/gm)].map((match) => match[1]).sort();
}

/** Each client interface and the schema of /openapi.json it mirrors. */
const MIRRORS = [
  ['AgentMessage', 'Message'],
  ['ProcessInfo', 'ProcessView'],
];

let server;
before(async () => {
  server = await Server.start();
});
after(async () => {
  await server?.stop();
});

test('the client types have exactly the fields of the OpenAPI schemas they mirror', async () => {
  const response = await fetch(`${server.base}/openapi.json`);
  assert.equal(response.status, 200);
  const document = await response.json();
  for (const [type, schema] of MIRRORS) {
    const properties = document.components?.schemas?.[schema]?.properties;
    assert.ok(properties, `/openapi.json has the schema ${schema}`);
    assert.deepEqual(fieldsOf(type), Object.keys(properties).sort(), `${type} mirrors ${schema}`);
  }
});
