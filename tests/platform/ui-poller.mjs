// The platform UI's message poller, run against agent-stream as the UI runs it against
// the API it replaces. It does what these two files of umans-tech/issue-solver-bots do,
// in the same order and with the same requests:
//   conversational-ui/hooks/use-process-messages.ts   (the React hook)
//   conversational-ui/app/api/processes/[processId]/messages/route.ts and
//   conversational-ui/app/api/processes/[processId]/route.ts (its Next.js routes)
// without React: state lives in plain variables instead of refs and useState.
//
// The hook polls every 3 s (`pollInterval = 3000`), skips a poll that comes within 1 s
// of the last one, checks the process's status when 12 s have passed since the status
// last changed, stops at a terminal status (completed, success, failed, error) and after
// 3 errors in a row. POLL_INTERVAL_MS scales all four times alike, so that a test can
// run the same logic faster; unset, they are the UI's own.
//
// Environment: CUDU_ENDPOINT (the API's base URL, as the UI's server is configured),
// PROCESS_ID, POLL_INTERVAL_MS (default 3000), MAX_POLLS (give up after that many polls;
// default: never). Output: one JSON line per poll, then one `stopped` line.

const cuduEndpoint = process.env.CUDU_ENDPOINT;
const processId = process.env.PROCESS_ID;
const pollInterval = Number(process.env.POLL_INTERVAL_MS ?? 3000);
const maxPolls = Number(process.env.MAX_POLLS ?? Infinity);
const scale = pollInterval / 3000;
const debounce = 1000 * scale;
const statusEvery = 12000 * scale;

const report = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);

// ---- The Next.js routes: what `/api/processes/{id}/messages` and `/api/processes/{id}` answer.

/** route.ts of messages: forward, `response.json()`, answer it as JSON. */
async function messagesRoute() {
  try {
    const apiUrl = `${cuduEndpoint}/processes/${processId}/messages`;
    const response = await fetch(apiUrl, {
      method: 'GET',
      headers: {
        'Content-Type': 'application/json',
      },
    });
    if (!response.ok) {
      const errorData = await response.json().catch(() => ({}));
      return { ok: false, status: response.status, body: { error: 'Failed to fetch process messages', details: errorData } };
    }
    const data = await response.json();
    return { ok: true, status: 200, body: data };
  } catch (error) {
    return { ok: false, status: 500, body: { error: 'Failed to fetch process messages' } };
  }
}

/** route.ts of a process (without its cache): forward, answer the JSON. */
async function processRoute() {
  try {
    const response = await fetch(`${cuduEndpoint}/processes/${processId}`, {
      method: 'GET',
      headers: {
        'Content-Type': 'application/json',
      },
    });
    if (!response.ok) {
      const errorData = await response.json().catch(() => ({}));
      return { ok: false, status: response.status, body: { error: 'Failed to fetch process', details: errorData } };
    }
    return { ok: true, status: 200, body: await response.json() };
  } catch (error) {
    return { ok: false, status: 500, body: { error: 'Failed to fetch process' } };
  }
}

// ---- The hook.

let messages = [];
let intervalId = null;
let isPolling = false;
let lastPollTime = 0;
let errorCount = 0;
let lastMessageCount = 0;
let lastStatusCheck = 0;
let currentStatus = null;
let initialLoad = true;
let polls = 0;
let stopped = false;

const isTerminalState = (status) => {
  if (!status) return false;
  const terminalStates = ['completed', 'success', 'failed', 'error'];
  return terminalStates.includes(status.toLowerCase());
};

function clearIntervalIfExists(reason) {
  if (intervalId) {
    clearInterval(intervalId);
    intervalId = null;
  }
  if (!stopped) {
    stopped = true;
    report({ event: 'stopped', reason, errors: errorCount, status: currentStatus, messages });
  }
}

async function fetchMessages() {
  const now = Date.now();
  if (isPolling || now - lastPollTime < debounce) return;
  if (currentStatus && isTerminalState(currentStatus)) {
    clearIntervalIfExists(`terminal status ${currentStatus}`);
    return;
  }
  if (polls >= maxPolls) {
    clearIntervalIfExists(`gave up after ${polls} polls`);
    return;
  }
  polls += 1;
  try {
    isPolling = true;
    lastPollTime = now;

    const response = await messagesRoute();
    if (!response.ok) {
      throw new Error(`Failed to fetch messages: ${response.status} ${JSON.stringify(response.body)}`);
    }
    const newMessages = response.body;
    const sortedMessages = newMessages.sort((a, b) => (a.turn || 0) - (b.turn || 0));
    if (sortedMessages.length !== lastMessageCount || initialLoad) {
      messages = sortedMessages;
      lastMessageCount = sortedMessages.length;
    }
    errorCount = 0;
    initialLoad = false;

    if (now - lastStatusCheck > statusEvery) {
      const statusResponse = await processRoute();
      if (statusResponse.ok) {
        const newStatus = statusResponse.body.status;
        if (newStatus && newStatus !== currentStatus) {
          currentStatus = newStatus;
          lastStatusCheck = now;
          if (isTerminalState(newStatus)) {
            report({ event: 'poll', ok: true, count: messages.length, status: currentStatus });
            clearIntervalIfExists(`terminal status ${newStatus}`);
            return;
          }
        }
      }
    }
    report({ event: 'poll', ok: true, count: messages.length, status: currentStatus });
  } catch (err) {
    errorCount += 1;
    initialLoad = false;
    report({ event: 'poll', ok: false, error: err.message });
    if (errorCount >= 3) clearIntervalIfExists('3 errors in a row');
  } finally {
    isPolling = false;
  }
}

fetchMessages();
intervalId = setInterval(fetchMessages, pollInterval);
