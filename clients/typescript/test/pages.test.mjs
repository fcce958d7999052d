// The client in a real browser (headless chromium), on pages served from another
// origin than the server's, as a UI at app.example.com following stream.example.com:
// the React hook through a crash of the server, and CORS (`--allow-origin`) for the
// client's fetch with a Bearer token and for a native EventSource with the token in the
// query; a page of an origin not listed gets nothing.

import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { build } from 'esbuild';

import { Browser, servePages } from './browser.mjs';
import { Server, messages, processId, range } from './support.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const HEARTBEAT_MS = 1000;

/** A page: an HTML shell and its script, bundled by esbuild. */
async function page(entry) {
  const result = await build({
    entryPoints: [path.join(here, 'pages', entry)],
    bundle: true,
    write: false,
    format: 'iife',
    jsx: 'automatic',
    minify: true,
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
  });
  return {
    '/': ['text/html', '<!doctype html><meta charset="utf-8"><title>agent-stream client</title><div id="root"></div><script src="/app.js"></script>'],
    '/app.js': ['text/javascript', result.outputFiles[0].text],
  };
}

let browser;
let hookPages;
let corsPages;
let otherPages;
let server;

before(async () => {
  const [hook, cors] = await Promise.all([page('hook.jsx'), page('cors.js')]);
  [hookPages, corsPages, otherPages] = await Promise.all([servePages(hook), servePages(cors), servePages(cors)]);
  // Two origins listed, in both ways the flag takes them; `otherPages` is not listed.
  server = await Server.start([
    '--heartbeat',
    `${HEARTBEAT_MS / 1000}s`,
    '--allow-origin',
    hookPages.origin,
    '--allow-origin',
    `${corsPages.origin},http://app.example.test`,
  ]);
  browser = await Browser.launch();
});

after(async () => {
  await browser?.close();
  await server?.stop();
  await Promise.all([hookPages, corsPages, otherPages].map((pages) => pages?.close()));
});

const HOOK_STATE = 'return window.hookState ?? null;';

test('the React hook shows the history, then each new message once, through a crash, then the end', async () => {
  const id = processId('hook');
  await server.append(id, messages('m', 3));
  const query = new URLSearchParams({ base: server.base, process: id, token: server.readToken(id), heartbeat: HEARTBEAT_MS });
  await browser.open(`${hookPages.origin}/?${query}`);
  await browser.waitFor(
    'the history',
    HOOK_STATE,
    (s) => s && !s.loading && s.connection === 'live' && s.status === 'running' && s.ids.length === 3,
  );

  await server.append(id, messages('m', 3, 4));
  await browser.waitFor('live messages', HOOK_STATE, (s) => s.ids.length === 6);

  await server.kill9();
  await browser.waitFor('the drop to show', HOOK_STATE, (s) => s.connection === 'reconnecting');
  await server.start();
  await server.append(id, messages('m', 2, 7));
  await browser.waitFor('messages after the restart', HOOK_STATE, (s) => s.ids.length === 8 && s.connection === 'live');

  await server.finish(id, 'succeeded');
  const final = await browser.waitFor('the end', HOOK_STATE, (s) => s.connection === 'ended');
  assert.deepEqual(final, {
    ids: range(1, 8).map((n) => `${n}-0`),
    loading: false,
    error: null,
    status: 'succeeded',
    connection: 'ended',
  });
  const shown = await browser.eval("return [...document.querySelectorAll('li')].map((li) => li.textContent);");
  assert.equal(shown.length, 8);
  assert.equal(shown[7], '8-0 AssistantMessage (turn 8): message 8');
  assert.match(await browser.eval("return document.getElementById('state').textContent;"), /status succeeded · connection ended/);
  await browser.screenshot('client-hook');
});

const CROSS_ORIGIN = 'return { client: window.client, snapshot: window.snapshot, sse: window.sse };';

test('a listed origin follows with fetch and a Bearer token, and with EventSource and the token in the query', async () => {
  const id = processId('cors');
  await server.append(id, messages('m', 5));
  const query = new URLSearchParams({ base: server.base, process: id, token: server.readToken(id) });
  await browser.open(`${corsPages.origin}/?${query}`);
  // The snapshot too: it reads pages until an empty one, so one read after the next
  // appends would count them as well.
  await browser.waitFor(
    'both follows to start and the snapshot to end',
    CROSS_ORIGIN,
    (s) => s.client?.ids.length === 5 && s.sse?.ids.length === 5 && (s.snapshot?.count !== null || s.snapshot?.error),
  );
  await server.append(id, messages('m', 5, 6));
  await server.finish(id, 'succeeded');
  const got = await browser.waitFor('both follows to end', CROSS_ORIGIN, (s) => s.client.ended && s.sse.ended);
  const ids = range(1, 10).map((n) => `${n}-0`);
  assert.deepEqual(got.client, { ids, statuses: ['connecting', 'live'], ended: 'succeeded', error: null });
  assert.deepEqual(got.snapshot, { count: 5, error: null });
  assert.deepEqual(got.sse.ids, ids);
  assert.equal(got.sse.ended, 'succeeded');
  assert.equal(got.sse.errors, 0);
});

test('an origin not listed is refused by the browser', async () => {
  const id = processId('cors');
  await server.append(id, messages('m', 3));
  const query = new URLSearchParams({ base: server.base, process: id, token: server.readToken(id) });
  await browser.open(`${otherPages.origin}/?${query}`);
  // A CORS refusal looks like a network error to a page: the snapshot fails, the
  // follow keeps trying (and never gets through), and the EventSource gives up.
  const got = await browser.waitFor(
    'the browser to refuse',
    CROSS_ORIGIN,
    (s) => s.snapshot?.error && s.sse?.readyState === 2,
  );
  assert.equal(got.snapshot.error, 'TypeError');
  assert.deepEqual(got.client, { ids: [], statuses: ['connecting'], ended: null, error: null }, 'never live');
  assert.deepEqual(got.sse.ids, []);
  // The same request from a listed origin in the same browser gets through.
  await browser.open(`${corsPages.origin}/?${query}`);
  await browser.waitFor('the listed origin to read', CROSS_ORIGIN, (s) => s.snapshot?.count === 3 && s.sse?.ids.length === 3);
});
