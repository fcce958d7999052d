// A real browser for the client's page tests: Debian's chromium, headless, driven over
// WebDriver by chromedriver, as the Rust suite's tests/contract/browser.rs does. The
// W3C WebDriver protocol is plain JSON over HTTP, so `fetch` is the whole client: no
// package, and chromedriver comes with the very chromium version installed.
//
// `bash .ci/test` installs both and sets AGENT_STREAM_TEST_CHROMIUM and
// AGENT_STREAM_TEST_CHROMEDRIVER; without them, /usr/bin/chromium and
// /usr/bin/chromedriver are used. A missing browser fails the test: it is never skipped.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { WAIT_MS } from './support.mjs';

function tool(env, fallback) {
  const file = process.env[env] ?? fallback;
  if (!existsSync(file)) {
    throw new Error(
      `${file} not found (set ${env}): the page tests need Debian's chromium and chromedriver. Run them with \`bash .ci/test\`, which installs them, or \`apt-get install chromium chromium-driver\``,
    );
  }
  return file;
}

export class Browser {
  static async launch() {
    const chromium = tool('AGENT_STREAM_TEST_CHROMIUM', '/usr/bin/chromium');
    const chromedriver = tool('AGENT_STREAM_TEST_CHROMEDRIVER', '/usr/bin/chromedriver');
    const profile = mkdtempSync(path.join(tmpdir(), 'agent-stream-chromium-'));
    // Its own process group, so that closing it ends the browser it started too.
    const driver = spawn(chromedriver, ['--port=0'], { stdio: ['ignore', 'pipe', 'ignore'], detached: true });
    const port = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`chromedriver did not start within ${WAIT_MS} ms`)), WAIT_MS);
      let output = '';
      driver.stdout.setEncoding('utf8');
      driver.stdout.on('data', (chunk) => {
        output += chunk;
        const match = /started successfully on port (\d+)/.exec(output);
        if (match) {
          clearTimeout(timer);
          resolve(Number(match[1]));
        }
      });
      driver.on('exit', () => reject(new Error(`chromedriver exited: ${output}`)));
    });
    const browser = new Browser(`http://127.0.0.1:${port}`, driver, profile);
    const session = await browser.#command('POST', '/session', {
      capabilities: {
        alwaysMatch: {
          'goog:chromeOptions': {
            binary: chromium,
            // Without the background-networking flags, a sandboxed machine's chromium
            // has its connections refused; --no-sandbox because CI runs as root.
            args: [
              '--headless',
              '--no-sandbox',
              '--disable-gpu',
              '--disable-quic',
              '--no-first-run',
              '--disable-background-networking',
              '--disable-component-update',
              '--disable-sync',
              '--disable-dev-shm-usage',
              '--window-size=1000,900',
              `--user-data-dir=${profile}`,
            ],
          },
        },
      },
    });
    browser.session = session.sessionId;
    return browser;
  }

  constructor(driverUrl, driver, profile) {
    this.driverUrl = driverUrl;
    this.driver = driver;
    this.profile = profile;
  }

  async #command(method, urlPath, body) {
    const response = await fetch(this.driverUrl + urlPath, {
      method,
      headers: { 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(WAIT_MS),
    });
    const { value } = await response.json();
    if (!response.ok) throw new Error(`WebDriver ${method} ${urlPath}: ${value?.message ?? response.status}`);
    return value;
  }

  open(url) {
    return this.#command('POST', `/session/${this.session}/url`, { url });
  }

  /** Runs `script` (a function body that `return`s) in the page. */
  eval(script) {
    return this.#command('POST', `/session/${this.session}/execute/sync`, { script, args: [] });
  }

  /** Waits until `check(value of script)` holds; fails with what the page last showed. */
  async waitFor(what, script, check, timeoutMs = WAIT_MS) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = await this.eval(script);
      if (check(value)) return value;
      if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${what}: the page shows ${JSON.stringify(value)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  /** Saves a screenshot as `<dir>/<name>.png` when AGENT_STREAM_TEST_SCREENSHOTS names a directory. */
  async screenshot(name) {
    const dir = process.env.AGENT_STREAM_TEST_SCREENSHOTS;
    if (!dir) return;
    const png = await this.#command('GET', `/session/${this.session}/screenshot`);
    writeFileSync(path.join(dir, `${name}.png`), Buffer.from(png, 'base64'));
  }

  async close() {
    if (this.session) await this.#command('DELETE', `/session/${this.session}`).catch(() => {});
    try {
      process.kill(-this.driver.pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
    rmSync(this.profile, { recursive: true, force: true });
  }
}

/**
 * A web server for test pages on a port (and so an origin) of its own: `files` maps a
 * path to `[content type, body]`; `handler(request, response)`, when given, answers
 * what `files` does not.
 */
export async function servePages(files, handler) {
  const server = createServer((request, response) => {
    const file = files[new URL(request.url, 'http://x').pathname];
    if (file) {
      response.writeHead(200, { 'Content-Type': file[0], 'Cache-Control': 'no-store' });
      response.end(file[1]);
    } else if (handler) {
      handler(request, response);
    } else {
      response.writeHead(404).end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    close: () => {
      server.closeAllConnections();
      return new Promise((resolve) => server.close(resolve));
    },
  };
}
