// The hook's test page: what a UI would render with useProcessMessages, and the hook's
// state on `window.hookState` for the test to read.
import { createRoot } from 'react-dom/client';

import { useProcessMessages } from '../../dist/react.js';

const params = new URLSearchParams(location.search);

function text(message) {
  const block = message.payload?.content?.[0];
  return typeof block?.text === 'string' ? block.text : '';
}

function Process() {
  const processId = params.get('process');
  const { messages, loading, error, status, connection } = useProcessMessages(processId, {
    baseUrl: params.get('base'),
    token: params.get('token'),
    heartbeatMs: Number(params.get('heartbeat')),
  });
  window.hookState = { ids: messages.map((m) => m.stream_id), loading, error, status, connection };
  return (
    <main style={{ font: '15px system-ui', margin: 24 }}>
      <h1 style={{ fontSize: 20 }}>Process {processId}</h1>
      <p id="state">
        status <b>{status ?? '…'}</b> · connection <b>{connection}</b>
        {loading && ' · loading'}
        {error && ` · error: ${error}`}
      </p>
      <ol>
        {messages.map((m) => (
          <li key={m.stream_id}>
            <code>{m.stream_id}</code> {m.type} (turn {m.turn}): {text(m)}
          </li>
        ))}
      </ol>
    </main>
  );
}

createRoot(document.getElementById('root')).render(<Process />);
