// The peer in agent-stream's bench (benches/perf/peer.rs): Vercel's resumable-stream
// behind a plain Node HTTP server, as a Next.js route would use it, on the bench's Redis.
//
//   PORT=… REDIS_URL=redis://… node server.mjs
//
// The bench drives it exactly as it drives agent-stream, with the same lean HTTP/1.1
// client and the same SSE followers:
//   PUT  /streams/{id}          the producer starts: createNewResumableStream, whose own
//                               copy of the stream this server drains (no reader of its own)
//   GET  /streams/{id}          a follower: resumeExistingStream, as SSE (200, chunked)
//   POST /streams/{id}/events   the producer emits one event (a JSON object); the answer
//                               {"stream_id":"N-0"} comes once it is enqueued (nothing stored)
//   POST /streams/{id}/finish   the producer emits the end event and closes the stream
//   GET  /healthz               200 once Redis is connected
//
// Frames are the ones agent-stream sends (`id: N-0`, `event: message`, the JSON with its
// `stream_id`; then `id: N-1`, `event: end`), so one follower checks both.

import http from "node:http";
import { createResumableStreamContext } from "resumable-stream";

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error("server.mjs: set PORT");
  process.exit(2);
}
if (!process.env.REDIS_URL) {
  console.error("server.mjs: set REDIS_URL");
  process.exit(2);
}

const context = createResumableStreamContext({
  keyPrefix: process.env.KEY_PREFIX || `perf-peer-${process.pid}`,
  waitUntil: (promise) => promise.catch((error) => console.error("producer:", error)),
});

/** Producers by stream id: the controller of the stream they write and their last seq. */
const producers = new Map();

/** The request's body as text, up to 1 MiB. */
function body(request) {
  return new Promise((resolve, reject) => {
    const parts = [];
    let size = 0;
    request.on("data", (part) => {
      size += part.length;
      if (size > 1 << 20) reject(new Error("body over 1 MiB"));
      else parts.push(part);
    });
    request.on("end", () => resolve(Buffer.concat(parts).toString("utf8")));
    request.on("error", reject);
  });
}

function answer(response, status, value) {
  const text = JSON.stringify(value);
  response.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(text),
  });
  response.end(text);
}

async function start(id, response) {
  if (producers.has(id)) return answer(response, 200, { id });
  let controller;
  const source = new ReadableStream({
    start(c) {
      controller = c;
    },
  });
  const producer = { controller, seq: 0 };
  producers.set(id, producer);
  const own = await context.createNewResumableStream(id, () => source);
  // The producer's own copy, read and dropped as a finished request's would be.
  (async () => {
    for await (const _ of own) {
      // nothing to do with it
    }
  })().catch((error) => console.error("own copy:", error));
  answer(response, 201, { id });
}

async function emit(id, request, response) {
  const producer = producers.get(id);
  if (!producer) return answer(response, 404, { error: "no such stream" });
  const text = (await body(request)).trim();
  if (!text.startsWith("{") || !text.endsWith("}")) {
    return answer(response, 400, { error: "an event is a JSON object" });
  }
  producer.seq += 1;
  const streamId = `${producer.seq}-0`;
  const data = `${text.slice(0, -1)},"stream_id":"${streamId}"}`;
  producer.controller.enqueue(`id: ${streamId}\nevent: message\ndata: ${data}\n\n`);
  answer(response, 201, { stream_id: streamId });
}

function finish(id, response) {
  const producer = producers.get(id);
  if (!producer) return answer(response, 404, { error: "no such stream" });
  const last = `${producer.seq}-0`;
  producer.controller.enqueue(`id: ${producer.seq}-1\nevent: end\ndata: {"status":"succeeded"}\n\n`);
  producer.controller.close();
  producers.delete(id);
  answer(response, 200, { last_stream_id: last });
}

async function follow(id, response) {
  const stream = await context.resumeExistingStream(id);
  if (!stream) return answer(response, stream === null ? 422 : 404, { error: "no stream to follow" });
  response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
  response.flushHeaders();
  for await (const chunk of stream) {
    // An empty chunk (the producer's "nothing yet" answer) would end a chunked body.
    if (chunk.length > 0) response.write(chunk);
  }
  response.end();
}

const server = http.createServer((request, response) => {
  const url = new URL(request.url, "http://peer");
  const parts = url.pathname.split("/").filter(Boolean);
  let work;
  if (url.pathname === "/healthz") work = Promise.resolve(answer(response, 200, { status: "ok" }));
  else if (parts[0] !== "streams" || !parts[1]) work = Promise.resolve(answer(response, 404, { error: "not found" }));
  else if (parts.length === 2 && request.method === "PUT") work = start(parts[1], response);
  else if (parts.length === 2 && request.method === "GET") work = follow(parts[1], response);
  else if (parts[2] === "events" && request.method === "POST") work = emit(parts[1], request, response);
  else if (parts[2] === "finish" && request.method === "POST") work = Promise.resolve(finish(parts[1], response));
  else work = Promise.resolve(answer(response, 404, { error: "not found" }));
  work.catch((error) => {
    console.error(request.method, url.pathname, error);
    if (!response.headersSent) answer(response, 500, { error: String(error) });
    else response.destroy();
  });
});
server.keepAliveTimeout = 60_000;
server.headersTimeout = 65_000;
server.listen(port, "127.0.0.1", () => console.log(`peer listening on 127.0.0.1:${port}`));
