// The test kit: the real agent-stream binary on a real PostgreSQL and Redis (from
// DATABASE_URL and REDIS_URL, which `bash .ci/test` starts and exports), with auth on,
// and helpers that speak the contract. Each server gets its own Redis key prefix; each
// test its own process ids.

import { execFileSync, spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../../..');

/** Generous bound on any one wait, so that a broken client fails instead of hanging. */
export const WAIT_MS = 20_000;

/** The binary: AGENT_STREAM_BIN, else the debug build of CARGO_TARGET_DIR (or target/). */
export const BIN =
  process.env.AGENT_STREAM_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(repo, 'target'), 'debug', 'agent-stream');

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(
      `${name} is not set: the client tests run the real server on PostgreSQL and Redis. Run them with \`bash .ci/test\`, which starts both, or set DATABASE_URL and REDIS_URL`,
    );
  }
  return value;
}

/** A process id of its own for each test. */
export function processId(label = 'ts') {
  return `${label}-${randomUUID()}`;
}

/** Messages `1..n` of a process, as a writer sends them. */
export function messages(prefix, n, from = 1) {
  return Array.from({ length: n }, (_, i) => ({
    id: `${prefix}-${from + i}`,
    type: 'AssistantMessage',
    turn: from + i,
    agent: 'CLAUDE_CODE',
    model: 'claude-sonnet-4-5-20250929',
    payload: { content: [{ text: `message ${from + i}` }] },
  }));
}

/** Waits until `check()` is truthy (polling), or fails saying what it waited for. */
export async function waitFor(what, check, timeoutMs = WAIT_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/**
 * `agent-stream serve` on a port of its own, with auth on (a secret made for it). It
 * keeps its port across {@link Server#kill9} and {@link Server#start}, so a client that
 * keeps its URL finds it again.
 */
export class Server {
  constructor(args = []) {
    this.args = args;
    this.secret = randomBytes(32).toString('hex');
    this.env = {
      ...process.env,
      DATABASE_URL: required('DATABASE_URL'),
      REDIS_URL: required('REDIS_URL'),
      AGENT_STREAM_REDIS_PREFIX: `ts-test-${randomUUID()}:`,
      AGENT_STREAM_AUTH_SECRET: this.secret,
      AGENT_STREAM_LOG: 'warn,agent_stream::cli=info',
      AGENT_STREAM_LOG_FORMAT: 'text',
      NO_COLOR: '1',
    };
    this.port = 0;
    this.child = null;
    this.log = [];
    if (!existsSync(BIN)) throw new Error(`${BIN} not found: build it with \`cargo build\` (or set AGENT_STREAM_BIN)`);
  }

  static async start(args = []) {
    const server = new Server(args);
    await server.start();
    server.writeToken = server.token(['--all', '--scope', 'write']);
    return server;
  }

  get base() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Starts it (again, on the same port once it has one) and waits until it listens. */
  async start() {
    if (this.child) throw new Error('the server is already running');
    const deadline = Date.now() + WAIT_MS;
    for (;;) {
      try {
        await this.#launch();
        return;
      } catch (error) {
        // A port just let go of by a killed server may take a moment to be free again.
        if (Date.now() > deadline) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  #launch() {
    const child = spawn(BIN, ['serve', '--listen', `127.0.0.1:${this.port}`, ...this.args], {
      env: this.env,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    running.add(child);
    return new Promise((resolve, reject) => {
      let pending = '';
      const timer = setTimeout(() => reject(new Error(`the server did not listen within ${WAIT_MS} ms:\n${this.log.join('\n')}`)), WAIT_MS);
      child.stderr.setEncoding('utf8');
      child.stderr.on('data', (chunk) => {
        pending += chunk;
        const lines = pending.split('\n');
        pending = lines.pop();
        for (const line of lines) {
          this.log.push(line);
          const match = line.includes('agent-stream listening') && / address=[^\s:]+:(\d+)/.exec(line);
          if (match) {
            clearTimeout(timer);
            this.port = Number(match[1]);
            this.child = child;
            resolve();
          }
        }
      });
      child.on('exit', (code, signal) => {
        running.delete(child);
        if (this.child === child) this.child = null;
        clearTimeout(timer);
        reject(new Error(`the server exited (${code ?? signal}) before listening:\n${this.log.slice(-20).join('\n')}`));
      });
    });
  }

  /** kill -9: no shutdown, connections cut as a crash would. */
  async kill9() {
    const child = this.child;
    if (!child) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGKILL');
    await exited;
    this.child = null;
  }

  /** SIGSTOP / SIGCONT: the server keeps its connections open but says nothing. */
  freeze() {
    this.child.kill('SIGSTOP');
  }

  thaw() {
    this.child.kill('SIGCONT');
  }

  async stop() {
    if (this.child) {
      this.child.kill('SIGCONT');
      await this.kill9();
    }
  }

  /** A token minted by the binary's `token` command with this server's secret. */
  token(args) {
    return execFileSync(BIN, ['token', ...args], { env: this.env, encoding: 'utf8' }).trim();
  }

  readToken(processId) {
    return this.token(['--process', processId, '--scope', 'read']);
  }

  async call(method, urlPath, body) {
    const response = await fetch(this.base + urlPath, {
      method,
      headers: { Authorization: `Bearer ${this.writeToken}`, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`${method} ${urlPath}: ${response.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  register(processId) {
    return this.call('PUT', `/processes/${processId}`);
  }

  append(processId, batch) {
    return this.call('POST', `/processes/${processId}/messages`, batch);
  }

  finish(processId, status = 'succeeded') {
    return this.call('POST', `/processes/${processId}/finish`, { status });
  }

  /** A metric's value summed over its labels, from `/metrics`. */
  async metric(name) {
    const text = await (await fetch(`${this.base}/metrics`)).text();
    return text
      .split('\n')
      .filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `))
      .reduce((sum, line) => sum + Number(line.split(' ').pop()), 0);
  }
}

/** The seqs of messages, from their stream IDs. */
export function seqs(list) {
  return list.map((message) => Number(message.stream_id.split('-')[0]));
}

/** `[from..to]`. */
export function range(from, to) {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i);
}
