// Browser client of the liveavatar_rt streaming protocol (liveavatar_rt/serve/protocol.py):
// image + audio (file paced in real time, or microphone) go up a websocket as float32 PCM;
// fMP4 segments come back and are played through Media Source Extensions.
// window.liveavatar exposes the live stats (the browser test reads them).
"use strict";

const $ = (id) => document.getElementById(id);
const CHUNK_S = 0.04; // audio message size: 40 ms, one video frame
const stats = { state: "idle", framesShown: 0, ttffMs: null, fps: 0, segments: 0, errors: [], server: null };
window.liveavatar = stats;

let ws = null, mediaSource = null, sourceBuffer = null, pending = [], expect = null;
let audioStop = null, audioStartedAt = null, frameTimes = [], firstAppended = false;

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function setStat(id, text) { $(id).textContent = text; }

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

// ---- video out: MSE ----------------------------------------------------------------------
function openMedia() {
  const video = $("video");
  mediaSource = new MediaSource();
  video.src = URL.createObjectURL(mediaSource);
  return new Promise((resolve) => mediaSource.addEventListener("sourceopen", resolve, { once: true }));
}

function appendNext() {
  if (!sourceBuffer || sourceBuffer.updating || pending.length === 0) return;
  const item = pending.shift();
  try {
    sourceBuffer.appendBuffer(item.data);
  } catch (e) {
    fail("append failed: " + e.message);
    return;
  }
  sourceBuffer.addEventListener("updateend", () => {
    if (item.seq !== undefined && ws && ws.readyState === WebSocket.OPEN) {
      ws.send(JSON.stringify({ type: "ack", seq: item.seq })); // acked once the player has it
    }
    if (item.seq !== undefined && !firstAppended) {
      firstAppended = true;
      $("video").play().catch((e) => status("press play: " + e.message));
    }
    trimAndCatchUp();
    appendNext();
  }, { once: true });
}

// Keep the player near the live edge, jump gaps left by dropped segments, free old data.
function trimAndCatchUp() {
  const video = $("video"), b = video.buffered;
  if (b.length === 0) return;
  const end = b.end(b.length - 1), t = video.currentTime;
  setStat("s-lat", Math.max(0, end - t).toFixed(2) + " s");
  if (end - t > 2.0) video.currentTime = end - 0.3;
  for (let i = 0; i < b.length; i++) {
    if (b.start(i) > t && (i === 0 || b.end(i - 1) <= t + 0.05) && b.start(i) - t < 1.0 && video.readyState < 3) {
      video.currentTime = b.start(i); // a gap: the segment before it was dropped
      break;
    }
  }
  if (!sourceBuffer.updating && t > 20 && b.start(0) < t - 15) sourceBuffer.remove(0, t - 10);
}

function watchFrames() {
  const video = $("video");
  const onFrame = (now, meta) => {
    stats.framesShown = meta.presentedFrames;
    if (stats.ttffMs === null && audioStartedAt !== null) {
      stats.ttffMs = now - audioStartedAt;
      setStat("s-ttff", (stats.ttffMs / 1000).toFixed(2) + " s");
    }
    frameTimes.push(now);
    while (frameTimes.length && frameTimes[0] < now - 2000) frameTimes.shift();
    stats.fps = frameTimes.length / 2;
    setStat("s-frames", String(stats.framesShown));
    setStat("s-fps", stats.fps.toFixed(1));
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
    if (q) setStat("s-pdrop", String(q.droppedVideoFrames));
    if (meta.presentedFrames === 1 || meta.presentedFrames % 25 === 0) reportPlayer(q);
    if (["streaming", "ending", "done"].includes(stats.state)) video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

// The player's own figures, for the server's /metrics (what a viewer actually saw).
function reportPlayer(q) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  ws.send(JSON.stringify({ type: "player", ttff_s: stats.ttffMs === null ? null : stats.ttffMs / 1000,
                           frames_shown: stats.framesShown, frames_dropped: q ? q.droppedVideoFrames : 0 }));
}

// ---- audio in ----------------------------------------------------------------------------
function sendPcm(samples) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (audioStartedAt === null) audioStartedAt = performance.now();
  ws.send(samples.buffer.slice(samples.byteOffset, samples.byteOffset + samples.byteLength));
}

async function decodeFile(file, rate) {
  const bytes = await file.arrayBuffer();
  const probe = new OfflineAudioContext(1, 1, rate);
  const decoded = await probe.decodeAudioData(bytes);
  // render to mono at `rate` (the OfflineAudioContext mixes channels down and resamples)
  const ctx = new OfflineAudioContext(1, Math.ceil(decoded.duration * rate), rate);
  const src = ctx.createBufferSource();
  src.buffer = decoded;
  src.connect(ctx.destination);
  src.start();
  return (await ctx.startRendering()).getChannelData(0);
}

// Send a decoded file in real time (as a microphone would), then "end".
function streamFile(pcm, rate) {
  const chunk = Math.round(CHUNK_S * rate);
  let sent = 0;
  const t0 = performance.now();
  const timer = setInterval(() => {
    const due = Math.min(pcm.length, Math.ceil(((performance.now() - t0) / 1000 + CHUNK_S) * rate / chunk) * chunk);
    while (sent < due) {
      sendPcm(pcm.subarray(sent, Math.min(sent + chunk, pcm.length)));
      sent += chunk;
    }
    if (sent >= pcm.length) {
      clearInterval(timer);
      if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "end" }));
      stats.state = "ending";
    }
  }, CHUNK_S * 1000 / 2);
  return () => clearInterval(timer);
}

async function streamMic() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  const ctx = new AudioContext();
  const src = ctx.createMediaStreamSource(stream);
  // ScriptProcessor: deprecated but needs no extra module file; 2048 samples = ~43 ms at 48 kHz
  const proc = ctx.createScriptProcessor(2048, 1, 1);
  proc.onaudioprocess = (e) => sendPcm(new Float32Array(e.inputBuffer.getChannelData(0)));
  src.connect(proc);
  proc.connect(ctx.destination);
  return { rate: ctx.sampleRate, stop: () => { proc.disconnect(); stream.getTracks().forEach((t) => t.stop()); ctx.close(); } };
}

// ---- session -----------------------------------------------------------------------------
function fail(message) {
  stats.errors.push(message);
  stats.state = "error";
  status(message, true);
  stop();
}

function onMessage(ev) {
  if (typeof ev.data !== "string") {
    if (!expect) return fail("binary message without a header");
    const header = expect;
    expect = null;
    if (header.type === "init") {
      sourceBuffer = mediaSource.addSourceBuffer(header.mime);
      pending.unshift({ data: ev.data });
    } else {
      pending.push({ data: ev.data, seq: header.seq });
      stats.segments += 1;
      stats.server = header.stats;
      const s = header.stats;
      if (s.ttff_s !== null) setStat("s-sttff", s.ttff_s.toFixed(2) + " s");
      if (s.fps !== null) setStat("s-sfps", s.fps.toFixed(1));
      setStat("s-sdrop", s.dropped + " / " + s.late);
    }
    appendNext();
    return;
  }
  const msg = JSON.parse(ev.data);
  if (msg.type === "init" || msg.type === "segment") expect = msg;
  else if (msg.type === "ready") onReady(msg);
  else if (msg.type === "done") { stats.server = msg.stats; stats.state = "done"; status("done"); }
  else if (msg.type === "error") fail("server: " + msg.code + ": " + msg.message);
}

async function onReady(msg) {
  $("note").textContent = msg.note || "";
  status(`streaming ${msg.width}x${msg.height} at ${msg.fps} fps (session ${msg.session}, setup ${msg.setup_s} s)`);
  stats.state = "streaming";
  watchFrames();
  try {
    if (audioStop === "file") {
      audioStop = streamFile(window._liveavatarPcm, window._liveavatarRate);
    } else {
      const mic = await streamMic();
      audioStop = mic.stop;
    }
  } catch (e) {
    fail("audio: " + e.message);
  }
}

async function start() {
  const image = $("image").files[0];
  if (!image) return status("choose a portrait image first", true);
  const useMic = document.querySelector('input[name="source"]:checked').value === "mic";
  let rate = 16000;
  if (!useMic) {
    const file = $("audiofile").files[0];
    if (!file) return status("choose an audio file (or the microphone)", true);
    try {
      window._liveavatarPcm = await decodeFile(file, rate);
    } catch (e) {
      return status("cannot decode the audio file: " + e.message, true);
    }
    window._liveavatarRate = rate;
    audioStop = "file";
  } else {
    rate = new AudioContext().sampleRate;
    audioStop = "mic";
  }
  Object.assign(stats, { state: "connecting", framesShown: 0, ttffMs: null, fps: 0, segments: 0, errors: [], server: null });
  audioStartedAt = null; frameTimes = []; firstAppended = false; pending = []; expect = null; sourceBuffer = null;
  $("start").disabled = true; $("stop").disabled = false;
  await openMedia();
  const token = $("token").value;
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws` +
    (token ? `?token=${encodeURIComponent(token)}` : "");
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  ws.onmessage = onMessage;
  ws.onclose = (e) => { if (stats.state !== "done" && stats.state !== "error") status(`closed (${e.code} ${e.reason})`); stop(); };
  ws.onopen = async () => {
    status("opening a session (encoding the portrait)...");
    ws.send(JSON.stringify({ type: "start", image: await readAsDataURL(image), seed: 0,
                             audio: { format: "f32le", sample_rate: rate, channels: 1 } }));
  };
}

function stop() {
  if (typeof audioStop === "function") audioStop();
  audioStop = null;
  if (ws && ws.readyState <= WebSocket.OPEN && stats.state !== "done") ws.close();
  $("start").disabled = false; $("stop").disabled = true;
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", () => { stats.state = "stopped"; stop(); });
