// The cross-origin page: follows a process of a server on another origin, with the
// TypeScript client (fetch, Bearer token) and with a native EventSource (token in the
// query), and puts what each got on `window` for the test to read.
import { fetchMessages, followProcess } from '../../dist/index.js';

const params = new URLSearchParams(location.search);
const baseUrl = params.get('base');
const processId = params.get('process');
const token = params.get('token');

const client = (window.client = { ids: [], statuses: [], ended: null, error: null });
(async () => {
  try {
    for await (const message of followProcess({
      baseUrl,
      processId,
      token,
      initialBackoffMs: 100,
      maxBackoffMs: 500,
      onStatus: (status) => client.statuses.push(status),
      onEnd: (status) => {
        client.ended = status;
      },
    })) {
      client.ids.push(message.stream_id);
    }
  } catch (error) {
    client.error = `${error.name}: ${error.message}`;
  }
})();

const snapshot = (window.snapshot = { count: null, error: null });
fetchMessages({ baseUrl, processId, token }).then(
  (messages) => {
    snapshot.count = messages.length;
  },
  (error) => {
    snapshot.error = error.name;
  },
);

const sse = (window.sse = { ids: [], ended: null, errors: 0, readyState: null });
const source = new EventSource(
  `${baseUrl}/processes/${encodeURIComponent(processId)}/messages?access_token=${encodeURIComponent(token)}`,
);
source.addEventListener('message', (event) => sse.ids.push(event.lastEventId));
source.addEventListener('end', (event) => {
  sse.ended = JSON.parse(event.data).status;
  source.close();
  sse.readyState = source.readyState;
});
source.addEventListener('error', () => {
  sse.errors += 1;
  sse.readyState = source.readyState;
});
