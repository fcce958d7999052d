// The README's Next.js route handler, as written there: it is cut out of README.md,
// compiled, and called with Web `Request`s as Next.js calls it, against the real server.
// It must refuse what the session may not see, and stream a follow through unbuffered.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

import { followProcess } from '../dist/index.js';
import { Server, messages, processId, range, seqs } from './support.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));

/** The route handler's code block from the README. */
function routeHandlerSource() {
  const readme = readFileSync(path.join(here, '..', 'README.md'), 'utf8');
  const match = /```ts\n(\/\/ app\/api\/agent-stream\/processes\/\[id\]\/\[\[\.\.\.rest\]\]\/route\.ts\n[\s\S]*?)```/.exec(readme);
  assert.ok(match, 'the README has the route handler');
  return match[1];
}

/** The handler module, with `@/lib/auth` standing for a session that may see `visible`. */
async function loadHandler() {
  const result = await build({
    stdin: { contents: routeHandlerSource(), loader: 'ts', sourcefile: 'route.ts' },
    bundle: true,
    write: false,
    format: 'esm',
    platform: 'node',
    logLevel: 'silent',
    plugins: [
      {
        name: 'session',
        setup(build) {
          build.onResolve({ filter: /^@\/lib\/auth$/ }, () => ({ path: 'auth', namespace: 'session' }));
          build.onLoad({ filter: /.*/, namespace: 'session' }, () => ({
            contents:
              'export const auth = async () => globalThis.session;' +
              'export const mayRead = async (session, id) => session.visible.includes(id);',
            loader: 'js',
          }));
        },
      },
    ],
  });
  const code = result.outputFiles[0].text;
  return import(`data:text/javascript;base64,${Buffer.from(code).toString('base64')}`);
}

let server;
let GET;
const UI = 'http://ui.example.test/api/agent-stream';

/** Calls the handler as Next.js would for `url` under the UI's proxy path. */
function call(url, init = {}) {
  const [id, ...rest] = new URL(url).pathname.slice(new URL(UI).pathname.length + '/processes/'.length).split('/');
  return GET(new Request(url, init), { params: Promise.resolve({ id: decodeURIComponent(id), rest: rest.filter(Boolean) }) });
}

before(async () => {
  server = await Server.start();
  process.env.AGENT_STREAM_URL = server.base;
  process.env.AGENT_STREAM_READ_TOKEN = server.token(['--all', '--scope', 'read']);
  ({ GET } = await loadHandler());
});
after(() => server.stop());

test('the proxy streams a follow through as it comes, and the client follows through it', async () => {
  const id = processId('proxy');
  globalThis.session = { visible: [id] };
  await server.append(id, messages('m', 2));
  const response = await call(`${UI}/processes/${id}/messages/stream`, { headers: { Accept: 'application/x-ndjson' } });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'application/x-ndjson');
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let received = '';
  const lines = () => received.split('\n').filter(Boolean).map((line) => JSON.parse(line));
  const readUntil = async (n) => {
    while (lines().length < n) {
      const { done, value } = await reader.read();
      assert.ok(!done, `the body ended after ${lines().length} lines`);
      received += decoder.decode(value, { stream: true });
    }
  };
  await readUntil(2);
  // Appended while the response is open: it arrives without the response ending.
  await server.append(id, messages('m', 1, 3));
  await readUntil(3);
  assert.deepEqual(seqs(lines()), [1, 2, 3]);
  await reader.cancel();

  // followProcess through the proxy, as the hook with baseUrl '/api/agent-stream' does.
  const followed = [];
  let ended;
  const finishing = server.finish(id, 'succeeded');
  for await (const message of followProcess({ baseUrl: UI, processId: id, fetch: call, onEnd: (s) => (ended = s) })) {
    followed.push(message);
  }
  await finishing;
  assert.deepEqual(seqs(followed), range(1, 3));
  assert.equal(ended, 'succeeded');
});

test('the proxy refuses a process the session may not see, and paths it does not serve', async () => {
  const id = processId('proxy');
  await server.append(id, messages('m', 1));
  globalThis.session = { visible: ['another-process'] };
  assert.equal((await call(`${UI}/processes/${id}/messages?follow=false`)).status, 403);
  globalThis.session = { visible: [id] };
  assert.equal((await call(`${UI}/processes/${id}/finish`)).status, 404);
  const snapshot = await call(`${UI}/processes/${id}/messages?follow=false`, { headers: { Accept: 'application/json' } });
  assert.equal(snapshot.status, 200);
  assert.deepEqual(seqs(await snapshot.json()), [1]);
});
