/**
 * The agent-stream client: follow a process live ({@link followProcess}), read its
 * messages once ({@link fetchMessages}) or its record ({@link fetchProcess}).
 *
 * A follow is the NDJSON follow (`GET /processes/{id}/messages/stream`) read with
 * `fetch`, so that a server or a browser can send `Authorization`. The stream ID of a
 * message is its durable position: after any drop the follow asks again with
 * `?after=<the last stream_id it yielded>`, and the server sends exactly what comes
 * next, so every message is yielded once, in order, however often it reconnects.
 *
 * No runtime dependency: only `fetch`, `AbortController`, `TextDecoder` and timers,
 * which Node 18+ and every current browser have.
 */

/** One message, as the service sends it. */
export interface AgentMessage {
  /** The writer's id (a UUID), or one the service made. */
  id: string;
  /** The message's kind, e.g. `AssistantMessage`. */
  type: string;
  turn: number | null;
  /** As the writer sent it: a string (`CLAUDE_CODE`) or any JSON value. */
  agent: unknown;
  /** As the writer sent it: a string or any JSON value (`{ai_model, version}`). */
  model: unknown;
  /** The agent SDK's message, never altered. */
  payload: Record<string, unknown>;
  /** `<seq>-0`: the message's position, and the cursor to resume after it. */
  stream_id: string;
  /** When it was stored (RFC 3339, UTC). */
  created_at: string;
}

/** A process's record (`GET /processes/{id}`). */
export interface ProcessInfo {
  process_id: string;
  /** `running`, or the status it was finished with (`succeeded`, `failed`, …). */
  status: string;
  last_stream_id: string;
  message_count: number;
  created_at: string;
  finished_at: string | null;
}

/** Where a follow's connection is. */
export type ConnectionStatus = 'connecting' | 'live' | 'reconnecting';

/** A token, or a function that gives the current one (called before each request). */
export type TokenSource = string | (() => string | Promise<string>);

/** What every call needs to reach the service. */
export interface ClientOptions {
  /** The service's base URL, e.g. `https://stream.example.com` or `/api/agent-stream`. */
  baseUrl: string;
  processId: string;
  /** Sent as `Authorization: Bearer <token>`. */
  token?: TokenSource;
  /** Cancels the call: a follow then ends quietly (its iteration completes). */
  signal?: AbortSignal;
  /** The `fetch` to use (the global one by default). */
  fetch?: typeof fetch;
}

export interface FollowOptions extends ClientOptions {
  /** Yield the messages after this stream ID; `0` (the default) is the beginning. */
  after?: string;
  /** Told each time the connection's state changes. */
  onStatus?: (status: ConnectionStatus) => void;
  /** Told the process's final status (`succeeded`, …) before the iteration completes. */
  onEnd?: (status: string) => void;
  /**
   * The server's heartbeat interval in ms (its `--heartbeat`, 15 s by default). A
   * connection silent for twice this long is taken as dropped, and replaced.
   */
  heartbeatMs?: number;
  /** First wait before reconnecting, in ms; it doubles after each failure in a row. */
  initialBackoffMs?: number;
  /** Longest wait before reconnecting, in ms. */
  maxBackoffMs?: number;
}

export interface FetchMessagesOptions extends ClientOptions {
  /** Only the messages after this stream ID; `0` (the default) is the beginning. */
  after?: string;
  /** At most this many (1 to 10000), in one request. Without it, every message. */
  limit?: number;
}

/** The service's heartbeat by default (its `--heartbeat`). */
export const DEFAULT_HEARTBEAT_MS = 15_000;
/** First wait before reconnecting. */
export const DEFAULT_INITIAL_BACKOFF_MS = 250;
/** Longest wait before reconnecting. */
export const DEFAULT_MAX_BACKOFF_MS = 10_000;
/** The largest page the service gives; {@link fetchMessages} pages by it. */
const MAX_PAGE = 10_000;
/** A `Retry-After` longer than this is not waited for in full. */
const MAX_RETRY_AFTER_MS = 60_000;

/** A refusal by the service: its status and the contract's error code and message. */
export class AgentStreamError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'AgentStreamError';
    this.status = status;
    this.code = code;
  }

  /** Whether asking again later may succeed (a 5xx, a timeout, too many requests). */
  get retryable(): boolean {
    return isRetryable(this.status);
  }

  /** The error a response carries, read from its `{"error": {code, message}}` body. */
  static async fromResponse(response: Response): Promise<AgentStreamError> {
    let code = `http_${response.status}`;
    let message = `${response.status} ${response.statusText}`.trim();
    try {
      const body = (await response.json()) as { error?: { code?: unknown; message?: unknown } };
      if (typeof body?.error?.code === 'string') code = body.error.code;
      if (typeof body?.error?.message === 'string') message = body.error.message;
    } catch {
      // A proxy's HTML error page, or no body at all: the status says enough.
    }
    return new AgentStreamError(response.status, code, message);
  }
}

function isRetryable(status: number): boolean {
  return status >= 500 || status === 408 || status === 429;
}

/**
 * Follows a process: every message after `after`, exactly once and in order, then each
 * new one as it is appended, until the process is finished (then `onEnd(status)` is
 * called and the iteration completes) or `signal` is aborted (the iteration completes
 * without `onEnd`). Leaving the loop early (`break`) closes the connection.
 *
 * A dropped connection, a server restart, a 5xx or a connection silent past twice the
 * heartbeat is not an error: the follow reconnects after a backoff and resumes after the
 * last message it yielded. A process the service does not know yet is waited for. A
 * refusal that asking again cannot fix (a bad token, a bad process id or cursor) is
 * thrown as an {@link AgentStreamError}.
 */
export async function* followProcess(options: FollowOptions): AsyncGenerator<AgentMessage, void, undefined> {
  const fetchImpl = options.fetch ?? globalThis.fetch;
  const { signal } = options;
  const silenceMs = 2 * (options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS);
  const initialBackoff = options.initialBackoffMs ?? DEFAULT_INITIAL_BACKOFF_MS;
  const maxBackoff = options.maxBackoffMs ?? DEFAULT_MAX_BACKOFF_MS;
  let after = options.after ?? '0';
  let backoff = initialBackoff;
  let reported: ConnectionStatus | undefined;
  const report = (status: ConnectionStatus) => {
    if (status !== reported) {
      reported = status;
      options.onStatus?.(status);
    }
  };

  // `reconnecting` is for a follow that was live once; until then it is `connecting`.
  let connected = false;
  report('connecting');
  while (!signal?.aborted) {
    const attempt = new AbortController();
    const abortAttempt = () => attempt.abort();
    signal?.addEventListener('abort', abortAttempt);
    let silence: ReturnType<typeof setTimeout> | undefined;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(abortAttempt, silenceMs);
    };
    let retryAfterMs = 0;
    try {
      // The watch covers the wait for the response's head too: a server that accepts
      // the connection but never answers is as silent as one that stops sending.
      watch();
      const response = await fetchImpl(endpoint(options, '/messages/stream', { after }), {
        headers: await headers(options.token, 'application/x-ndjson'),
        signal: attempt.signal,
      });
      if (!response.ok) {
        const error = await AgentStreamError.fromResponse(response);
        // A process not known yet (its agent has not started) will be: wait for it.
        if (!error.retryable && !notKnownYet(error)) throw error;
        retryAfterMs = retryAfter(response);
      } else if (!response.body) {
        throw new AgentStreamError(response.status, 'no_body', 'the follow answered without a body');
      } else {
        report('live');
        connected = true;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let pending = '';
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            watch();
            // Anything arriving (a heartbeat too) shows the connection is sound.
            backoff = initialBackoff;
            pending += decoder.decode(value, { stream: true });
            let start = 0;
            for (let newline = pending.indexOf('\n'); newline >= 0; newline = pending.indexOf('\n', start)) {
              const line = pending.slice(start, newline).trim();
              start = newline + 1;
              if (!line) continue; // a heartbeat
              const item = JSON.parse(line) as AgentMessage | { event: 'end'; status: string };
              if ('event' in item && item.event === 'end') {
                options.onEnd?.(item.status);
                return;
              }
              const message = item as AgentMessage;
              if (compareStreamIds(message.stream_id, after) <= 0) continue;
              after = message.stream_id;
              // A slow consumer is not a silent server: the watch waits meanwhile.
              clearTimeout(silence);
              yield message;
              watch();
            }
            // A line cut by a drop stays here, and is asked for again.
            pending = pending.slice(start);
          }
        } finally {
          reader.cancel().catch(() => {});
        }
      }
    } catch (error) {
      if (error instanceof AgentStreamError && !error.retryable) throw error;
      if (signal?.aborted) return;
      // Otherwise a network error, a silent connection or a cut line: reconnect.
    } finally {
      clearTimeout(silence);
      signal?.removeEventListener('abort', abortAttempt);
      attempt.abort();
    }
    if (connected) report('reconnecting');
    const jittered = backoff / 2 + Math.random() * (backoff / 2);
    await sleep(Math.max(jittered, retryAfterMs), signal);
    backoff = Math.min(backoff * 2, maxBackoff);
  }
}

/**
 * The messages after `after`, in order, as a JSON array (the snapshot, not a follow).
 * With `limit`, one request of at most that many; without it, every message, read in
 * pages. Sends `Accept: application/json` and `follow=false`, so it gets the snapshot
 * from any version of the service. A process not known yet has none: `[]`.
 */
export async function fetchMessages(options: FetchMessagesOptions): Promise<AgentMessage[]> {
  if (options.limit !== undefined) {
    return fetchPage(options, options.after ?? '0', options.limit);
  }
  const messages: AgentMessage[] = [];
  let after = options.after ?? '0';
  for (;;) {
    // A page may hold fewer than asked (the service also bounds it in bytes): only an
    // empty one says there is nothing more.
    const page = await fetchPage(options, after, MAX_PAGE);
    if (page.length === 0) return messages;
    messages.push(...page);
    after = page[page.length - 1]!.stream_id;
  }
}

/** The process's record; `null` when the service does not know it (yet). */
export async function fetchProcess(options: ClientOptions): Promise<ProcessInfo | null> {
  const response = await (options.fetch ?? globalThis.fetch)(endpoint(options, '', {}), {
    headers: await headers(options.token, 'application/json'),
    signal: options.signal,
  });
  if (!response.ok) {
    const error = await AgentStreamError.fromResponse(response);
    if (notKnownYet(error)) return null;
    throw error;
  }
  return (await response.json()) as ProcessInfo;
}

async function fetchPage(options: ClientOptions, after: string, limit: number): Promise<AgentMessage[]> {
  const response = await (options.fetch ?? globalThis.fetch)(
    endpoint(options, '/messages', { follow: 'false', after, limit: String(limit) }),
    { headers: await headers(options.token, 'application/json'), signal: options.signal },
  );
  if (!response.ok) {
    const error = await AgentStreamError.fromResponse(response);
    // A process not known yet has no messages (a service of the older contract says 404).
    if (notKnownYet(error)) return [];
    throw error;
  }
  return (await response.json()) as AgentMessage[];
}

function notKnownYet(error: AgentStreamError): boolean {
  return error.status === 404 && error.code === 'process_not_found';
}

/**
 * Orders two stream IDs (`<seq>-<n>`, or a bare `<seq>`) by position: negative when `a`
 * comes first. Compared as decimal digits, so a seq of any size keeps its order.
 */
export function compareStreamIds(a: string, b: string): number {
  const [aSeq = '0', aPart = '0'] = a.split('-');
  const [bSeq = '0', bPart = '0'] = b.split('-');
  return compareDigits(aSeq, bSeq) || compareDigits(aPart, bPart);
}

function compareDigits(a: string, b: string): number {
  const x = a.replace(/^0+/, '');
  const y = b.replace(/^0+/, '');
  if (x.length !== y.length) return x.length - y.length;
  return x < y ? -1 : x > y ? 1 : 0;
}

function endpoint(options: ClientOptions, path: string, query: Record<string, string>): string {
  const base = options.baseUrl.replace(/\/+$/, '');
  const search = new URLSearchParams(query).toString();
  return `${base}/processes/${encodeURIComponent(options.processId)}${path}${search ? `?${search}` : ''}`;
}

async function headers(token: TokenSource | undefined, accept: string): Promise<Record<string, string>> {
  const result: Record<string, string> = { Accept: accept };
  const value = typeof token === 'function' ? await token() : token;
  if (value) result.Authorization = `Bearer ${value}`;
  return result;
}

/** `Retry-After` in ms (seconds only, as the service sends it), or 0. */
function retryAfter(response: Response): number {
  const seconds = Number(response.headers.get('retry-after'));
  return Number.isFinite(seconds) && seconds > 0 ? Math.min(seconds * 1000, MAX_RETRY_AFTER_MS) : 0;
}

/** Waits `ms`, or less if `signal` aborts first. */
function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done);
  });
}
