/**
 * `useProcessMessages` for React: the platform's polling hook's `{messages, loading,
 * error}`, fed live by a follow instead of a poll every few seconds, so that a UI
 * switches by changing one import.
 *
 * On mount (and when the process changes) it reads the history and the process's
 * record at once (`loading` until both are in), then follows from the last message of
 * the history: new messages are appended as they come, each once and in order, and the
 * follow resumes by itself after a drop. It stops when the process ends, when
 * `enabled` turns false, or on unmount.
 */

import { useEffect, useRef, useState } from 'react';

import {
  type AgentMessage,
  type ConnectionStatus,
  type TokenSource,
  fetchMessages,
  fetchProcess,
  followProcess,
} from './index.js';

export interface UseProcessMessagesOptions {
  /** The service's base URL, or a same-origin proxy's (the default `''` is this origin). */
  baseUrl?: string;
  /** Sent as `Authorization: Bearer <token>`. */
  token?: TokenSource;
  /** `false` leaves the process alone (no request), as the polling hook's `enabled`. */
  enabled?: boolean;
  /** The server's heartbeat in ms (see `followProcess`). */
  heartbeatMs?: number;
  /** Told the final status when the process ends. */
  onEnd?: (status: string) => void;
  fetch?: typeof fetch;
}

/** The connection as the hook shows it: a follow's, or `ended` / `closed` / `idle`. */
export type HookConnection = ConnectionStatus | 'ended' | 'closed' | 'idle';

export interface ProcessMessages {
  /** Every message so far, in the process's order (by `stream_id`). */
  messages: AgentMessage[];
  /** True while the history is being read. */
  loading: boolean;
  /** Why the process cannot be shown (a refusal such as a bad token), or `null`. */
  error: string | null;
  /**
   * The process's status: `running`, or the status it ended with (`succeeded`, …);
   * `null` before it is known (and for a process the service does not know yet).
   */
  status: string | null;
  /**
   * `connecting`, `live` or `reconnecting` while following; `ended` once the process
   * ended; `closed` after an error; `idle` without a process or when not enabled.
   */
  connection: HookConnection;
}

const IDLE: ProcessMessages = { messages: [], loading: false, error: null, status: null, connection: 'idle' };

export function useProcessMessages(
  processId: string | null | undefined,
  options: UseProcessMessagesOptions = {},
): ProcessMessages {
  const { baseUrl = '', enabled = true, heartbeatMs } = options;
  const [state, setState] = useState<ProcessMessages>(IDLE);
  // Read when needed, so that a new function each render does not restart the follow.
  const latest = useRef(options);
  latest.current = options;
  const tokenKey = typeof options.token === 'function' ? 'function' : options.token;

  useEffect(() => {
    if (!processId || !enabled) {
      setState(IDLE);
      return;
    }
    const controller = new AbortController();
    const { signal } = controller;
    const update = (change: (state: ProcessMessages) => ProcessMessages) => {
      if (!signal.aborted) setState(change);
    };
    const client = {
      baseUrl,
      processId,
      signal,
      token: () => {
        const token = latest.current.token;
        return (typeof token === 'function' ? token() : token) ?? '';
      },
      fetch: (input: RequestInfo | URL, init?: RequestInit) => (latest.current.fetch ?? globalThis.fetch)(input, init),
    };
    setState({ messages: [], loading: true, error: null, status: null, connection: 'connecting' });

    // Messages of one network read are shown in one render, not one render each.
    let batch: AgentMessage[] = [];
    const flush = () => {
      const messages = batch;
      batch = [];
      if (messages.length) update((state) => ({ ...state, messages: state.messages.concat(messages) }));
    };

    (async () => {
      try {
        const [history, info] = await Promise.all([fetchMessages(client), fetchProcess(client)]);
        update((state) => ({ ...state, messages: history, loading: false, status: info?.status ?? null }));
        const after = history.length ? history[history.length - 1]!.stream_id : '0';
        let ended: string | undefined;
        const follow = followProcess({
          ...client,
          after,
          heartbeatMs,
          onStatus: (connection) =>
            update((state) => ({
              ...state,
              connection,
              status: connection === 'live' && state.status === null ? 'running' : state.status,
            })),
          onEnd: (status) => {
            ended = status;
          },
        });
        for await (const message of follow) {
          if (batch.push(message) === 1) setTimeout(flush, 0);
        }
        flush();
        if (ended !== undefined) {
          const status = ended;
          update((state) => ({ ...state, status, connection: 'ended' }));
          latest.current.onEnd?.(status);
        }
      } catch (error) {
        if (signal.aborted) return;
        flush();
        const message = error instanceof Error ? error.message : String(error);
        update((state) => ({ ...state, loading: false, error: message, connection: 'closed' }));
      }
    })();
    return () => controller.abort();
  }, [processId, enabled, baseUrl, tokenKey, heartbeatMs]);

  return state;
}
