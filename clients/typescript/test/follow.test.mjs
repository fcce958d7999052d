// followProcess, fetchMessages and fetchProcess against the real server: every message
// after the cursor exactly once and in order, whatever happens to the connection.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { AgentStreamError, fetchMessages, fetchProcess, followProcess } from '../dist/index.js';
import { Server, WAIT_MS, messages, processId, range, seqs, waitFor } from './support.mjs';

/** The server's heartbeat in these tests, so that silence is told in seconds. */
const HEARTBEAT_MS = 1000;

/** Follows in the background, collecting what it yields and reports. */
function collect(server, id, options = {}) {
  const seen = { messages: [], statuses: [], ended: undefined, error: undefined, done: false };
  const controller = new AbortController();
  seen.abort = () => controller.abort();
  seen.finished = (async () => {
    try {
      for await (const message of followProcess({
        baseUrl: server.base,
        processId: id,
        token: server.readToken(id),
        heartbeatMs: HEARTBEAT_MS,
        initialBackoffMs: 50,
        maxBackoffMs: 500,
        signal: controller.signal,
        onStatus: (status) => seen.statuses.push(status),
        onEnd: (status) => {
          seen.ended = status;
        },
        ...options,
      })) {
        seen.messages.push(message);
      }
    } catch (error) {
      seen.error = error;
    } finally {
      seen.done = true;
    }
  })();
  return seen;
}

describe('followProcess', () => {
  let server;
  before(async () => {
    server = await Server.start(['--heartbeat', `${HEARTBEAT_MS / 1000}s`]);
  });
  after(() => server.stop());

  test('yields every message in order, live ones too, then the end', async () => {
    const id = processId();
    await server.append(id, messages('m', 50));
    const seen = collect(server, id);
    for (let batch = 0; batch < 10; batch++) {
      await server.append(id, messages('m', 25, 51 + batch * 25));
    }
    await server.finish(id, 'succeeded');
    await seen.finished;
    assert.equal(seen.error, undefined);
    assert.deepEqual(seqs(seen.messages), range(1, 300));
    assert.deepEqual(
      seen.messages.map((m) => m.id),
      range(1, 300).map((n) => `m-${n}`),
    );
    assert.equal(seen.ended, 'succeeded');
    assert.deepEqual(seen.statuses, ['connecting', 'live'], 'one connection did it all');
  });

  test('starts after the cursor it is given', async () => {
    const id = processId();
    await server.append(id, messages('m', 10));
    await server.finish(id, 'failed');
    const seen = collect(server, id, { after: '7-0' });
    await seen.finished;
    assert.deepEqual(seqs(seen.messages), [8, 9, 10]);
    assert.equal(seen.ended, 'failed');
    // From the end's own id: only the end.
    const atEnd = collect(server, id, { after: '10-1' });
    await atEnd.finished;
    assert.deepEqual(atEnd.messages, []);
    assert.equal(atEnd.ended, 'failed');
  });

  test('an abort ends the iteration quietly and closes the connection', async () => {
    const id = processId();
    await server.append(id, messages('m', 3));
    const seen = collect(server, id);
    await waitFor('3 messages', () => seen.messages.length === 3);
    await waitFor('the follow to be counted', async () => (await server.metric('agent_stream_follows_active')) === 1);
    seen.abort();
    await seen.finished;
    assert.equal(seen.error, undefined);
    assert.equal(seen.ended, undefined, 'an abort is not an end');
    await waitFor('the server to see the client leave', async () => (await server.metric('agent_stream_follows_active')) === 0);
  });

  test('leaving the loop early closes the connection', async () => {
    const id = processId();
    await server.append(id, messages('m', 5));
    const got = [];
    for await (const message of followProcess({ baseUrl: server.base, processId: id, token: server.readToken(id) })) {
      got.push(message);
      if (got.length === 2) break;
    }
    assert.deepEqual(seqs(got), [1, 2]);
    await waitFor('the server to see the client leave', async () => (await server.metric('agent_stream_follows_active')) === 0);
  });

  test('a refusal is thrown, not retried', async () => {
    const id = processId();
    await server.register(id);
    const seen = collect(server, id, { token: server.readToken('another-process') });
    await seen.finished;
    assert.ok(seen.error instanceof AgentStreamError, String(seen.error));
    assert.equal(seen.error.status, 403);
    assert.equal(seen.error.code, 'forbidden');
    assert.deepEqual(seen.statuses, ['connecting']);
  });

  test('a process not known yet is waited for, as its page opens before its agent starts', async () => {
    const id = processId();
    const seen = collect(server, id);
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.deepEqual(seen.messages, []);
    assert.equal(seen.error, undefined);
    await server.append(id, messages('m', 2));
    await server.finish(id);
    await seen.finished;
    assert.deepEqual(seqs(seen.messages), [1, 2]);
    assert.equal(seen.ended, 'succeeded');
  });

  test('an idle follow stays on one connection: heartbeats keep it', async () => {
    const id = processId();
    await server.register(id);
    const seen = collect(server, id);
    await waitFor('live', () => seen.statuses.includes('live'));
    await new Promise((resolve) => setTimeout(resolve, 3.5 * HEARTBEAT_MS));
    assert.deepEqual(seen.statuses, ['connecting', 'live']);
    await server.append(id, messages('m', 1));
    await server.finish(id);
    await seen.finished;
    assert.deepEqual(seqs(seen.messages), [1]);
    assert.deepEqual(seen.statuses, ['connecting', 'live']);
  });

  test('a connection silent past twice the heartbeat is replaced, and the follow resumes', async () => {
    const id = processId();
    await server.append(id, messages('m', 3));
    const seen = collect(server, id);
    await waitFor('3 messages', () => seen.messages.length === 3);
    server.freeze();
    try {
      // Noticed within twice the heartbeat of the last thing received (give or take a
      // heartbeat before the freeze); the idle test above shows it is not noticed sooner.
      await waitFor('the silence to be noticed', () => seen.statuses.includes('reconnecting'), 4 * HEARTBEAT_MS);
    } finally {
      server.thaw();
    }
    await server.append(id, messages('m', 3, 4));
    await server.finish(id);
    await seen.finished;
    assert.equal(seen.error, undefined);
    assert.deepEqual(seqs(seen.messages), range(1, 6));
    assert.equal(seen.statuses.at(-1), 'live');
  });
});

describe('followProcess across a crash', () => {
  test('resumes after kill -9 and a restart with nothing lost or doubled', async (t) => {
    const server = await Server.start(['--heartbeat', '1s']);
    t.after(() => server.stop());
    const id = processId();
    const seen = collect(server, id, { token: server.token(['--process', id, '--scope', 'read']) });
    await server.append(id, messages('m', 20));
    await waitFor('a few messages before the crash', () => seen.messages.length >= 5);
    // Appends go on to the last moment; some reach the client, some do not.
    await server.append(id, messages('m', 20, 21));
    await server.kill9();
    await waitFor('the drop to be noticed', () => seen.statuses.includes('reconnecting'));
    await server.start();
    await server.append(id, messages('m', 10, 41));
    await server.kill9();
    await server.start();
    await server.append(id, messages('m', 10, 51));
    await server.finish(id, 'succeeded');
    await seen.finished;
    assert.equal(seen.error, undefined);
    assert.deepEqual(seqs(seen.messages), range(1, 60));
    assert.deepEqual(
      seen.messages.map((m) => m.id),
      range(1, 60).map((n) => `m-${n}`),
    );
    assert.equal(seen.ended, 'succeeded');
    assert.equal(seen.statuses.at(-1), 'live');
  });
});

describe('fetchMessages and fetchProcess', () => {
  let server;
  before(async () => {
    server = await Server.start();
  });
  after(() => server.stop());

  test('fetchMessages returns the JSON array, after a cursor, at most limit', async () => {
    const id = processId();
    await server.append(id, messages('m', 30));
    const client = { baseUrl: server.base, processId: id, token: server.readToken(id) };
    const all = await fetchMessages(client);
    assert.deepEqual(seqs(all), range(1, 30));
    assert.deepEqual(all[0].payload, { content: [{ text: 'message 1' }] });
    assert.deepEqual(seqs(await fetchMessages({ ...client, after: '25-0' })), range(26, 30));
    assert.deepEqual(seqs(await fetchMessages({ ...client, after: '10-0', limit: 5 })), range(11, 15));
    const unknown = processId();
    assert.deepEqual(await fetchMessages({ ...client, processId: unknown, token: server.readToken(unknown) }), []);
    // A running process's snapshot returns at once: it is no follow.
    const started = Date.now();
    await fetchMessages(client);
    assert.ok(Date.now() - started < WAIT_MS / 4);
  });

  test('fetchProcess returns the record, and null for a process not known', async () => {
    const id = processId();
    await server.append(id, messages('m', 2));
    await server.finish(id, 'succeeded');
    const info = await fetchProcess({ baseUrl: server.base, processId: id, token: server.readToken(id) });
    assert.equal(info.status, 'succeeded');
    assert.equal(info.last_stream_id, '2-0');
    const unknown = processId();
    assert.equal(await fetchProcess({ baseUrl: server.base, processId: unknown, token: server.readToken(unknown) }), null);
  });

  test('a bad token is an AgentStreamError with the contract code', async () => {
    const id = processId();
    await server.register(id);
    await assert.rejects(fetchMessages({ baseUrl: server.base, processId: id, token: 'not-a-token' }), (error) => {
      assert.ok(error instanceof AgentStreamError);
      assert.equal(error.status, 401);
      assert.equal(error.code, 'unauthorized');
      return true;
    });
  });
});
