// agent-stream's viewer: the list of recent processes (`/`) and one process as a live
// timeline (`/processes/{id}`). Every message is untrusted: the DOM is built from text
// nodes and attributes only, never from HTML. No framework, no build step.
'use strict';

// A page opened with `?access_token=` got the token back as an HttpOnly cookie (the
// service does that for a page, reads only), and same-origin cookies go with every call
// the page makes. So the token leaves the address at once, before any link or request
// is made from it: it would otherwise stay in the history and reach proxies' logs.
const address = new URL(location.href);
if (address.searchParams.has('access_token')) {
  address.searchParams.delete('access_token');
  history.replaceState(history.state, '', address.href);
}

/** `path` (relative to this page) with `params`. */
function api(path, params = {}) {
  const url = new URL(path, location.href);
  for (const [name, value] of Object.entries(params)) url.searchParams.set(name, value);
  return url.href;
}

async function getJson(path, params) {
  const response = await fetch(api(path, params), {
    headers: { Accept: 'application/json' },
    credentials: 'same-origin',
  });
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body?.error?.message ?? `the service answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

/** An element with attributes and children (strings become text nodes). */
function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value);
  }
  node.append(...children.filter((child) => child !== undefined && child !== null));
  return node;
}

const pretty = (value) => (typeof value === 'string' ? value : JSON.stringify(value, null, 2));
const when = (iso) => (iso ? new Date(iso).toLocaleString() : '');
const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

/** A fold: a summary line, and the value as preformatted text under it. */
function fold(label, value, className) {
  return h('details', { class: className }, h('summary', {}, label), h('pre', {}, pretty(value)));
}

if (document.body.dataset.page === 'list') listPage();
if (document.body.dataset.page === 'process') processPage();

function listPage() {
  const state = document.getElementById('list-state');
  const rows = document.querySelector('#processes tbody');
  async function load() {
    try {
      const { processes } = await getJson('processes', { limit: 100 });
      rows.replaceChildren(...processes.map((p) => h('tr', { 'data-process-id': p.process_id },
        h('th', { scope: 'row' }, h('a', { href: api(`processes/${encodeURIComponent(p.process_id)}`) }, p.process_id)),
        h('td', { class: `status status-${p.status === 'running' ? 'running' : 'finished'}` }, p.status),
        h('td', {}, String(p.message_count)),
        h('td', {}, h('time', { datetime: p.last_activity_at }, when(p.last_activity_at))))));
      const text = processes.length ? `${processes.length} ${processes.length === 1 ? 'process' : 'processes'}.` : 'No processes yet.';
      if (state.textContent !== text) state.textContent = text;
    } catch (error) {
      state.textContent = `Could not load the processes: ${error.message}`;
    }
  }
  document.getElementById('refresh').addEventListener('click', load);
  setInterval(() => document.visibilityState === 'visible' && load(), 15000);
  load();
}

function processPage() {
  const id = decodeURIComponent(location.pathname.split('/').pop());
  const timeline = document.getElementById('timeline');
  const connection = document.getElementById('connection');
  const status = document.getElementById('process-status');
  const count = document.getElementById('message-count');
  /** Where each tool call's result goes, by tool_use_id, until it arrives. */
  const resultSlots = new Map();
  let lastSeq = 0;
  let shown = 0;
  /** Rendered items waiting for the next frame. */
  const unshown = [];
  let source = null;
  let retryDelay = 1000;
  /** Whether the process was not known yet when the page opened: its agent has not started. */
  let waiting = false;

  document.title = `${id} · agent-stream`;
  document.getElementById('process-id').textContent = id;

  function setConnection(state, text) {
    connection.dataset.state = state;
    if (connection.textContent !== text) connection.textContent = text;
  }

  async function start() {
    try {
      const info = await getJson(location.pathname);
      status.textContent = info.status;
      document.getElementById('started').replaceChildren(h('time', { datetime: info.created_at }, when(info.created_at)));
    } catch (error) {
      // Not known yet: the platform opens a process's page before its agent starts.
      // The follow waits for the first message.
      if (error.status === 404) {
        waiting = true;
        status.textContent = 'waiting';
      } else if (error.status >= 400 && error.status < 500) {
        setConnection('closed', `Cannot show this process: ${error.message}`);
        return;
      }
    }
    connect();
  }

  function setLive() {
    if (waiting && !lastSeq) setConnection('waiting', 'Waiting for the agent to start: its messages appear here as soon as it does.');
    else setConnection('live', 'Live: new messages appear as the agent works.');
  }

  // The page reconnects by itself rather than leaving it to EventSource, which gives up
  // for good on an HTTP error (a 503 while a store is down): one path for every drop,
  // with a backoff, and `after` set to the last message shown, so it resumes exactly.
  function connect() {
    source = new EventSource(api(`${location.pathname}/messages`, lastSeq ? { after: lastSeq } : {}), { withCredentials: true });
    source.onopen = () => {
      retryDelay = 1000;
      setLive();
    };
    source.addEventListener('message', (event) => show(event));
    source.addEventListener('end', (event) => {
      source.close();
      flush(); // "finished" only once every message is on the page
      let end = {};
      try { end = JSON.parse(event.data); } catch { /* a malformed end still ends */ }
      status.textContent = end.status ?? 'finished';
      setConnection('finished', `Finished: ${end.status ?? 'unknown status'}. Nothing more will come.`);
    });
    source.onerror = () => {
      source.close();
      // The same words on every attempt, so a screen reader says it once.
      setConnection('reconnecting', 'Connection lost; reconnecting… Nothing shown is lost.');
      setTimeout(connect, retryDelay);
      retryDelay = Math.min(retryDelay * 2, 5000);
    };
  }

  function show(event) {
    const seq = Number.parseInt(event.lastEventId, 10);
    // Seqs only grow: anything at or below the last one shown is a repeat, never shown twice.
    if (!(seq > lastSeq)) return;
    if (waiting && !lastSeq) {
      waiting = false;
      status.textContent = 'running';
      setLive();
    }
    lastSeq = seq;
    // A message this page cannot parse or lay out is shown as the text that came, and
    // the page goes on with the next one.
    let item;
    try { item = render(JSON.parse(event.data), event.lastEventId); } catch { item = unreadable(event.data, event.lastEventId); }
    if (!unshown.length) requestAnimationFrame(flush);
    unshown.push(item);
  }

  function unreadable(text, streamId) {
    return h('li', { class: 'message unreadable', 'data-stream-id': streamId },
      h('p', { class: 'meta' }, h('span', { class: 'who' }, 'Unreadable message'), ' (shown as it came)'),
      h('pre', {}, text));
  }

  // Items go in once per frame, so a catch-up of thousands of messages lays out the page
  // once per frame rather than once per message. The page follows the newest item while
  // the reader is at the bottom.
  function flush() {
    if (!unshown.length) return;
    const follow = innerHeight + scrollY >= document.documentElement.scrollHeight - 48;
    timeline.append(...unshown);
    shown += unshown.length;
    unshown.length = 0;
    count.textContent = String(shown);
    if (follow) timeline.lastElementChild.scrollIntoView({ block: 'end' });
  }

  function render(message, streamId) {
    const payload = message.payload ?? {};
    const item = h('li', { class: `message type-${String(message.type).replace(/[^A-Za-z0-9_-]/g, '')}`, 'data-stream-id': streamId });
    const label = { AssistantMessage: 'Agent', UserMessage: 'User', SystemMessage: 'System', ResultMessage: 'Result' }[message.type] ?? String(message.type ?? 'Message');
    item.append(h('p', { class: 'meta' }, h('span', { class: 'who' }, label), ' ',
      h('time', { datetime: message.created_at }, message.created_at ? new Date(message.created_at).toLocaleTimeString() : '')));
    if (message.type === 'AssistantMessage' || message.type === 'UserMessage') {
      const content = payload.content;
      if (typeof content === 'string') item.append(h('p', { class: 'text' }, content));
      else if (Array.isArray(content)) {
        const shownHere = content.map((block) => renderBlock(block, item)).filter(Boolean);
        item.append(...shownHere);
        // Results that went under their calls leave nothing here: keep the item (it holds
        // the message's place and stream id) but out of sight.
        if (content.length && !shownHere.length) item.hidden = true;
      } else item.append(fold('Message', message));
    } else if (message.type === 'ResultMessage') {
      renderResult(item, payload);
    } else if (message.type === 'SystemMessage') {
      const data = payload.data ?? payload;
      const summary = payload.subtype === 'init'
        ? `Session started${data.model ? ` · ${data.model}` : ''}${data.cwd ? ` · ${data.cwd}` : ''}`
        : `System: ${payload.subtype ?? 'message'}`;
      item.append(fold(summary, payload));
    } else {
      item.append(fold(`${String(message.type ?? 'Message')} (shown as JSON)`, message));
    }
    return item;
  }

  /** The block's element, or null when it went elsewhere (a result under its call). */
  function renderBlock(block, item) {
    if (block === null || typeof block !== 'object') return h('p', { class: 'text' }, pretty(block));
    const kind = block.type ?? ('tool_use_id' in block ? 'tool_result'
      : 'thinking' in block ? 'thinking'
        : 'name' in block && 'input' in block ? 'tool_use'
          : 'text' in block ? 'text' : 'unknown');
    switch (kind) {
      case 'text':
        return h('p', { class: 'text' }, String(block.text));
      case 'thinking':
        return h('details', { class: 'thinking' }, h('summary', {}, 'Thinking'), h('p', { class: 'text' }, String(block.thinking)));
      case 'tool_use': {
        const slot = h('div', { class: 'result-slot' }, h('p', { class: 'pending' }, 'Waiting for the result…'));
        if (block.id !== undefined) resultSlots.set(String(block.id), slot);
        const subject = toolSubject(block.input);
        return h('section', { class: 'tool', 'aria-label': `Tool call: ${block.name}`, 'data-tool-use-id': block.id },
          h('p', { class: 'tool-head' }, h('span', { class: 'tool-name' }, String(block.name)), subject === null ? null : ' ', subject === null ? null : h('code', {}, clip(subject, 160))),
          Array.isArray(block.input?.todos) ? checklist(block.input.todos) : null,
          fold('Input', block.input, 'tool-input'),
          slot);
      }
      case 'tool_result': {
        const result = renderToolResult(block, item);
        const slot = resultSlots.get(String(block.tool_use_id));
        if (!slot) return result;
        resultSlots.delete(String(block.tool_use_id));
        slot.replaceChildren(result);
        return null;
      }
      default:
        return fold(`${kind} (shown as JSON)`, block);
    }
  }

  function renderToolResult(block, item) {
    const content = Array.isArray(block.content)
      ? block.content.map((part) => (part?.type === 'text' || typeof part?.text === 'string' ? part.text : pretty(part))).join('\n')
      : pretty(block.content ?? '');
    const lines = content === '' ? 0 : content.split('\n').length;
    const error = block.is_error === true;
    return h('details', { class: error ? 'tool-result error' : 'tool-result', 'data-from-stream-id': item.dataset.streamId },
      h('summary', {}, error ? '✗ Error' : 'Result', ` · ${lines} ${lines === 1 ? 'line' : 'lines'}`),
      h('pre', {}, content));
  }

  function renderResult(item, payload) {
    const failed = payload.is_error === true;
    const facts = [
      payload.duration_ms !== undefined && `took ${duration(payload.duration_ms)}`,
      payload.total_cost_usd !== undefined && `cost ${cost(payload.total_cost_usd)}`,
      payload.num_turns !== undefined && `${payload.num_turns} turns`,
    ].filter(Boolean);
    item.classList.toggle('error', failed);
    item.append(
      h('p', { class: 'outcome' }, h('strong', {}, failed ? '✗ Failed' : `✓ Done${payload.subtype ? ` (${payload.subtype})` : ''}`), facts.length ? ` · ${facts.join(' · ')}` : ''),
      payload.result !== undefined ? h('p', { class: 'text' }, pretty(payload.result)) : null,
      fold('Details', payload));
  }

  start();
}

// What a tool call is about, in one line: the same words as `agent-stream tail`
// (`toolSubject` there, in src/tail/format.rs). Both are held to the cases of
// tests/fixtures/tool-summaries.json; change them together.
const TOOL_SUBJECTS = ['command', 'file_path', 'notebook_path', 'pattern', 'path', 'url', 'query', 'description', 'prompt'];

const oneLine = (text) => text.split(/\s+/).filter(Boolean).join(' ');

/** `cargo test`, `def compute_total in src`, `3 todos: 1 in progress, 2 pending`, the
 * input as JSON, or null for an empty input. */
function toolSubject(input) {
  if (Array.isArray(input?.todos)) return todoCounts(input.todos);
  const key = input !== null && typeof input === 'object' ? TOOL_SUBJECTS.find((k) => typeof input[k] === 'string') : undefined;
  if (key !== undefined) {
    const subject = oneLine(input[key]);
    return typeof input.pattern === 'string' && typeof input.path === 'string' ? `${subject} in ${oneLine(input.path)}` : subject;
  }
  if (input === null || input === undefined || (typeof input === 'object' && !Array.isArray(input) && !Object.keys(input).length)) return null;
  return compactJson(input);
}

/** `3 todos: 1 in progress, 2 pending`: the counts by status, in order of first appearance. */
function todoCounts(todos) {
  const counts = new Map();
  for (const todo of todos) {
    const status = typeof todo?.status === 'string' ? todo.status : 'unknown';
    counts.set(status, (counts.get(status) ?? 0) + 1);
  }
  return `${todos.length} todos: ${[...counts].map(([status, n]) => `${n} ${status.replaceAll('_', ' ')}`).join(', ')}`;
}

/** JSON with object keys sorted, as tail prints it. */
function compactJson(value) {
  return JSON.stringify(value, (_, v) => (v !== null && typeof v === 'object' && !Array.isArray(v)
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]])) : v));
}

/** A todo list as a checklist: each item with its state in a mark and in words. */
function checklist(todos) {
  const marks = { completed: '☑', in_progress: '◐', pending: '☐' };
  return h('ul', { class: 'todos' }, ...todos.map((todo) => {
    const status = typeof todo?.status === 'string' ? todo.status : 'unknown';
    return h('li', { class: `todo todo-${status.replace(/[^A-Za-z0-9_-]/g, '')}` },
      h('span', { class: 'todo-mark', 'aria-hidden': 'true' }, marks[status] ?? '•'), ' ',
      String(todo?.content ?? pretty(todo)),
      h('span', { class: 'todo-status' }, ` (${status.replaceAll('_', ' ')})`));
  }));
}

/** `$0.42`: dollars to the cent, as tail prints them. */
const cost = (usd) => `$${Number(usd).toFixed(2)}`;

function duration(ms) {
  const seconds = Math.round(Number(ms) / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  return minutes < 60 ? `${minutes} min ${seconds % 60} s` : `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}
