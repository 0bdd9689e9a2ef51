// The fastmsfd page: upload images to /predict?heatmap=png, show each overlay, score and verdict; the
// threshold slider re-labels the results in the browser without running the model again.
"use strict";
const state = { results: [], modelThreshold: null, threshold: null };
const $ = (id) => document.getElementById(id);

function fmt(x) { return x === null || x === undefined ? "-" : Number(x).toPrecision(4); }

function verdictOf(r) {
  if (r.error) return ["error", "error: " + r.error];
  if (state.threshold === null) return ["", "score only (no threshold)"];
  return r.score > state.threshold ? ["anomalous", "ANOMALOUS"] : ["normal", "normal"];
}

// The score's parts: a high map z with its peak is a local defect there; a high global z with a low map z
// means the whole part looks different.
function explain(x) {
  const parts = ["map z " + fmt(x.map_z)];
  if (x.global_z !== null) parts.push("global z " + fmt(x.global_z));
  parts.push("peak at (" + x.peak.x + ", " + x.peak.y + ")");
  return parts.join(", ");
}

function render() {
  const box = $("results");
  box.textContent = "";
  state.results.forEach((r, i) => {
    const card = document.createElement("div");
    card.className = "card";
    card.id = "result-" + i;
    if (r.heatmap_png) {
      const img = document.createElement("img");
      img.className = "heatmap";
      img.alt = "heatmap overlay of " + r.name;
      img.src = "data:image/png;base64," + r.heatmap_png;
      card.appendChild(img);
    }
    const [cls, text] = verdictOf(r);
    const v = document.createElement("div");
    v.className = "verdict " + cls;
    v.id = "verdict-" + i;
    v.textContent = text;
    const s = document.createElement("div");
    s.textContent = r.error ? "" : "score " + fmt(r.score) + " (" + fmt(r.inference_ms) + " ms)";
    const e = document.createElement("div");
    e.className = "explanation";
    e.id = "explanation-" + i;
    e.textContent = r.explanation ? explain(r.explanation) : "";
    const n = document.createElement("div");
    n.className = "name";
    n.textContent = r.name;
    card.append(v, s, e, n);
    box.appendChild(card);
  });
  $("threshold-value").textContent = fmt(state.threshold);
}

function setSliderRange() {
  const scores = state.results.filter((r) => !r.error).map((r) => r.score);
  if (state.modelThreshold !== null) scores.push(state.modelThreshold);
  if (!scores.length) return;
  const lo = Math.min(...scores), hi = Math.max(...scores);
  const pad = (hi - lo) * 0.1 || Math.abs(hi) * 0.1 || 1;
  const slider = $("threshold");
  slider.min = lo - pad;
  slider.max = hi + pad;
  slider.disabled = false;
  if (state.threshold === null) state.threshold = state.modelThreshold ?? (lo + hi) / 2;
  slider.value = state.threshold;
  $("reset").disabled = state.modelThreshold === null;
}

async function upload(files) {
  $("status").textContent = "scoring " + files.length + " image(s)...";
  for (const file of files) {
    let r;
    try {
      const resp = await fetch("/predict?heatmap=png", {
        method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
      const body = await resp.json();
      r = resp.ok ? body.results[0] : { error: body.error || resp.statusText };
    } catch (e) {
      r = { error: String(e) };
    }
    r.name = file.name;
    state.results.push(r);
    setSliderRange();
    render();
  }
  $("status").textContent = state.results.length + " image(s) scored";
}

async function loadMetadata() {
  try {
    const m = await (await fetch("/metadata")).json();
    state.modelThreshold = m.threshold;
    state.threshold = m.threshold;
    $("model").textContent = m.backbone + " at " + m.input.height + "x" + m.input.width + ", " + m.runtime +
      " " + m.precision + ", threshold " + fmt(m.threshold);
    setSliderRange();
    render();
  } catch (e) {
    $("model").textContent = "model details unavailable: " + e;
  }
}

// The drift alarm (GET /health): shown while raised, so an engineer at the page sees that the scene changed.
async function pollDrift() {
  try {
    const d = (await (await fetch("/health")).json()).drift;
    const el = $("drift");
    el.hidden = !(d && d.drift);
    if (d && d.drift) {
      el.textContent = "drift alarm: " + (100 * d.rate).toFixed(1) + "% of the last " + d.images +
        " images above the threshold (normal parts: about " + (100 * d.expected_rate).toFixed(1) +
        "%); check the camera, the lighting and the material";
    }
  } catch (e) { /* the next poll tries again */ }
}

$("files").addEventListener("change", (e) => upload([...e.target.files]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  upload([...e.dataTransfer.files]);
});
$("threshold").addEventListener("input", (e) => { state.threshold = Number(e.target.value); render(); });
$("reset").addEventListener("click", () => {
  state.threshold = state.modelThreshold;
  $("threshold").value = state.threshold;
  render();
});
loadMetadata();
pollDrift();
setInterval(pollDrift, 5000);
