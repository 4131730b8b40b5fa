// The /demo page: camera -> JPEG frames -> /v1/detect/stream -> boxes on a canvas.
// The protocol is in the README ("Real-time detection over WebSocket").
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SUBPROTOCOL = "serve-http.v1";
  const MAX_WIDTH = 640;
  const RATE_WINDOW_MS = 2000;

  // Counters of the current stream; the browser test reads them too.
  const stats = { sent: 0, processed: 0, dropped: 0, failed: 0, answers: 0, boxesDrawn: 0, lastLatencyMs: null };
  window.demoStats = stats;

  let ws = null;
  let camera = null;
  let timer = null;
  let encoding = false;
  let opened = false;
  const sentAt = new Map();
  const sentTimes = [];
  const processedTimes = [];
  const capture = document.createElement("canvas");

  function setStatus(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  function apiKey() {
    return $("key").value.trim();
  }

  // Browsers cannot set headers on a WebSocket: the key travels as a subprotocol,
  // base64url-encoded, which keeps it out of URLs and so out of access logs.
  function base64url(text) {
    let binary = "";
    new TextEncoder().encode(text).forEach((byte) => { binary += String.fromCharCode(byte); });
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  async function listCameras() {
    if (!navigator.mediaDevices) return;
    const chosen = $("camera").value;
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    const select = $("camera");
    select.replaceChildren(new Option("default camera", ""));
    devices.forEach((d, i) => select.add(new Option(d.label || `camera ${i + 1}`, d.deviceId)));
    select.value = devices.some((d) => d.deviceId === chosen) ? chosen : "";
  }

  // Also checks the key with a plain request: a refused WebSocket handshake
  // only shows up in the browser as "closed", without the 401.
  async function loadModels() {
    const headers = apiKey() ? { "X-Api-Token": apiKey() } : {};
    const response = await fetch("/v1/models", { headers });
    if (response.status === 401) throw new Error("the server refused the API key");
    if (!response.ok) throw new Error(`GET /v1/models answered ${response.status}`);
    const chosen = $("model").value;
    const detectors = (await response.json()).models.filter((m) => m.task === "object-detection");
    const select = $("model");
    select.replaceChildren(new Option("default detector", ""));
    detectors.forEach((m) => select.add(new Option(m.name, m.name)));
    select.value = detectors.some((m) => m.name === chosen) ? chosen : "";
  }

  function options() {
    const message = { score_th: Number($("score").value) };
    if ($("model").value) message.model = $("model").value;
    return message;
  }

  function sendOptions() {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(options()));
  }

  function resetStats() {
    Object.assign(stats, { sent: 0, processed: 0, dropped: 0, failed: 0, answers: 0, boxesDrawn: 0, lastLatencyMs: null });
    sentAt.clear();
    sentTimes.length = 0;
    processedTimes.length = 0;
    showCounters();
  }

  async function start(event) {
    event.preventDefault();
    $("start").disabled = true;
    resetStats();
    try {
      await loadModels();
      const deviceId = $("camera").value;
      camera = await navigator.mediaDevices.getUserMedia({
        audio: false,
        video: { deviceId: deviceId ? { exact: deviceId } : undefined, width: { ideal: 640 }, height: { ideal: 480 } },
      });
      $("video").srcObject = camera;
      await $("video").play();
      await listCameras(); // device names are only known once access is granted
      openSocket();
    } catch (error) {
      stop();
      setStatus(`Cannot start: ${error.message || error}`, true);
    }
  }

  function openSocket() {
    const protocols = [SUBPROTOCOL];
    if (apiKey()) protocols.push(`bearer.${base64url(apiKey())}`);
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    opened = false;
    ws = new WebSocket(`${scheme}${location.host}/v1/detect/stream`, protocols);
    setStatus("Connecting...");
    ws.onopen = () => {
      opened = true;
      sendOptions();
      $("stop").disabled = false;
      schedule();
    };
    ws.onmessage = (event) => handle(JSON.parse(event.data));
    ws.onclose = (event) => {
      const why = event.reason ? `: ${event.reason}` : "";
      if (!opened) {
        setStatus("The server refused the stream (too many streams on this worker, or streaming unavailable).", true);
      } else {
        setStatus(`Stream closed (${event.code}${why}).`, event.code !== 1000);
      }
      stop(false);
    };
  }

  function schedule() {
    clearInterval(timer);
    const fps = Math.min(60, Math.max(1, Number($("fps").value) || 15));
    timer = setInterval(sendFrame, 1000 / fps);
  }

  function sendFrame() {
    const video = $("video");
    if (!ws || ws.readyState !== WebSocket.OPEN || !video.videoWidth) return;
    // The browser's own send buffer must not pile frames up either.
    if (encoding || ws.bufferedAmount > 0) return;
    const scale = Math.min(1, MAX_WIDTH / video.videoWidth);
    capture.width = Math.round(video.videoWidth * scale);
    capture.height = Math.round(video.videoHeight * scale);
    capture.getContext("2d").drawImage(video, 0, 0, capture.width, capture.height);
    encoding = true;
    capture.toBlob((blob) => {
      encoding = false;
      if (!blob || !ws || ws.readyState !== WebSocket.OPEN) return;
      stats.sent += 1; // the server numbers binary messages the same way
      const now = performance.now();
      sentAt.set(stats.sent, now);
      sentTimes.push(now);
      ws.send(blob);
    }, "image/jpeg", 0.8);
  }

  function handle(message) {
    if (message.type === "ready") {
      setStatus(`Streaming to ${message.options.model}.`);
    } else if (message.type === "options") {
      setStatus(`Streaming to ${message.options.model}, score >= ${message.options.score_th}.`);
    } else if (message.type === "detections") {
      const now = performance.now();
      if (sentAt.has(message.frame)) stats.lastLatencyMs = now - sentAt.get(message.frame);
      for (const seq of sentAt.keys()) if (seq <= message.frame) sentAt.delete(seq);
      processedTimes.push(now);
      stats.answers += 1;
      stats.processed = message.processed;
      stats.dropped = message.dropped;
      stats.failed = message.failed;
      $("model-ms").textContent = message.model_ms.toFixed(0);
      $("objects").textContent = message.objects.map((o) => `${o.label} ${o.score.toFixed(2)}`).join(", ") || "none";
      draw(message);
      showCounters();
    } else if (message.type === "error") {
      const where = message.frame ? `frame ${message.frame}` : "options";
      setStatus(`Error (${where}): ${message.error.message}`, true);
    }
  }

  function draw(message) {
    const overlay = $("overlay");
    overlay.width = message.width;
    overlay.height = message.height;
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const line = Math.max(2, Math.round(message.width / 200));
    ctx.lineWidth = line;
    ctx.font = `${8 * line}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    for (const object of message.objects) {
      const { x1, y1, x2, y2 } = object.box;
      ctx.strokeStyle = "#2bd96b";
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${object.label} ${object.score.toFixed(2)}`;
      const height = 10 * line;
      const top = y1 >= height ? y1 - height : y1;
      ctx.fillStyle = "#2bd96b";
      ctx.fillRect(x1 - line / 2, top, ctx.measureText(text).width + 4 * line, height);
      ctx.fillStyle = "#0b1a10";
      ctx.fillText(text, x1 + 1.5 * line, top + line);
      stats.boxesDrawn += 1;
    }
  }

  function rate(times) {
    const since = performance.now() - RATE_WINDOW_MS;
    while (times.length && times[0] < since) times.shift();
    return (times.length * 1000) / RATE_WINDOW_MS;
  }

  function showCounters() {
    $("sent-fps").textContent = rate(sentTimes).toFixed(1);
    $("processed-fps").textContent = rate(processedTimes).toFixed(1);
    $("processed").textContent = String(stats.processed);
    $("dropped").textContent = String(stats.dropped);
    $("latency").textContent = stats.lastLatencyMs === null ? "-" : stats.lastLatencyMs.toFixed(0);
  }

  function stop(closeSocket = true) {
    clearInterval(timer);
    timer = null;
    if (ws) {
      ws.onclose = null;
      if (closeSocket && ws.readyState <= WebSocket.OPEN) ws.close(1000, "stopped");
      ws = null;
    }
    if (camera) camera.getTracks().forEach((track) => track.stop());
    camera = null;
    $("video").srcObject = null;
    $("overlay").getContext("2d").clearRect(0, 0, $("overlay").width, $("overlay").height);
    $("start").disabled = false;
    $("stop").disabled = true;
  }

  $("controls").addEventListener("submit", start);
  $("stop").addEventListener("click", () => { stop(); setStatus("Stopped."); });
  $("score").addEventListener("change", sendOptions);
  $("model").addEventListener("change", sendOptions);
  $("fps").addEventListener("change", () => { if (timer) schedule(); });
  setInterval(showCounters, 500);
  listCameras().catch(() => {});
})();
