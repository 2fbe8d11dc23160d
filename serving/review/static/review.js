// The review page: sends the chosen file's bytes to /api/review and draws the answer.
// The file never leaves this page except in that one request; its name stays in the browser.
"use strict";

const $ = (id) => document.getElementById(id);

function show(id, visible) { $(id).hidden = !visible; }

function showError(message) {
  $("error").textContent = message;
  show("error", true);
  show("busy", false);
}

// "Drop a brain MRI image to classify as glioma, meningioma, notumor or pituitary": from the served
// version's own labels and modality, never a fixed "chest X-ray".
function dropWording(modality, labels) {
  const what = modality ? `${/^[aeiou]/i.test(modality) ? "an" : "a"} ${modality} image` : "an image";
  if (!labels || labels.length === 0) return `Drop ${what}`;
  const list = labels.length === 1 ? labels[0]
    : `${labels.slice(0, -1).join(", ")} or ${labels[labels.length - 1]}`;
  return `Drop ${what} to classify as ${list}`;
}

async function loadStatus() {
  try {
    const reply = await fetch("/api/status");
    const body = await reply.json();
    if (!reply.ok) throw new Error(body.error || reply.statusText);
    const version = body.serving_version === null ? "no version available yet" : `version ${body.serving_version}`;
    $("status").textContent = `model ${body.model}, ${version}, on ${body.server}`;
    $("status").classList.remove("down");
    $("drop-what").textContent = dropWording(body.modality, body.labels);
  } catch (err) {
    $("status").textContent = err.message;
    $("status").classList.add("down");
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the page could not display the returned image"));
    image.src = src;
  });
}

function draw(canvas, image, size) {
  canvas.width = size;
  canvas.height = size;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.clearRect(0, 0, size, size);
  context.drawImage(image, 0, 0, size, size);
}

function setOpacity() {
  const value = Number($("opacity").value);
  $("heatmap").style.opacity = String(value / 100);
  $("opacity-value").textContent = `${value}%`;
}

function renderScores(result) {
  const body = $("scores").querySelector("tbody");
  body.replaceChildren();
  for (const name of result.classes) {
    const score = result.scores[name];
    const row = document.createElement("tr");
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = `${(100 * score).toFixed(1)}%`;
    bar.append(fill);
    for (const cell of [name, score.toFixed(3), bar]) {
      const td = document.createElement("td");
      td.append(cell);
      row.append(td);
    }
    body.append(row);
  }
}

async function render(result, fileName) {
  const xray = await loadImage(result.image);
  const size = xray.naturalWidth;
  draw($("xray"), xray, size);
  const heat = $("heatmap");
  if (result.gradcam) {
    draw(heat, await loadImage(result.gradcam.heatmap), size);
    show("heatmap", true);
    show("opacity-control", true);
  } else {
    show("heatmap", false);
    show("opacity-control", false);
  }
  setOpacity();
  renderScores(result);
  const binary = result.classes.length === 2;
  const positive = binary && result.decision === result.classes[1];
  $("decision").textContent = result.decision;
  $("decision").classList.toggle("positive", positive);
  $("decision-rule").textContent = binary
    ? `${result.classes[1]} when its score ≥ ${result.threshold.toFixed(3)} (the model's operating threshold); ` +
      `here ${result.scores[result.classes[1]].toFixed(3)}`
    : "the class with the highest score";
  $("label").textContent = result.label;
  $("file-name").textContent = `${fileName} (${result.kind}, ${result.original_size[1]}×${result.original_size[0]} px)`;
  $("model").textContent = result.model;
  $("version").textContent = String(result.version);
  $("server").textContent = result.server;
  $("timings").textContent = `prediction ${result.timings_ms.predict} ms, Grad-CAM ${result.timings_ms.gradcam} ms`;
  const notes = $("notes");
  notes.replaceChildren(...result.notes.map((text) => {
    const li = document.createElement("li");
    li.textContent = text;
    return li;
  }));
  show("busy", false);
  show("result", true);
  $("result").dataset.ready = "true";
}

async function review(file) {
  show("error", false);
  show("result", false);
  delete $("result").dataset.ready;
  $("busy-name").textContent = file.name;
  show("busy", true);
  let reply;
  try {
    reply = await fetch("/api/review", {
      method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file,
    });
  } catch (err) {
    showError(`the review page's own server did not answer (${err.message}); is radflow review still running?`);
    return;
  }
  let body;
  try {
    body = await reply.json();
  } catch {
    body = { error: `${reply.status} ${reply.statusText}` };
  }
  if (!reply.ok) {
    showError(`${file.name}: ${body.error}`);
    if (reply.status === 502 || reply.status === 503) loadStatus();
    return;
  }
  try {
    await render(body, file.name);
  } catch (err) {
    showError(err.message);
  }
}

function setUp() {
  const zone = $("dropzone");
  $("file").addEventListener("change", () => {
    if ($("file").files.length) review($("file").files[0]);
    $("file").value = "";  // choosing the same file again is a new review
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) review(event.dataTransfer.files[0]);
  });
  $("opacity").addEventListener("input", setOpacity);
  loadStatus();
}

setUp();
