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
    if (body.pacs) {
      $("pacs-host").textContent = body.pacs;
      show("pacs-form", true);
    }
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
  $("stored").textContent = storedText(result.stored);
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

function storedText(stored) {
  if (!stored) return "uploaded here, not from the PACS";
  if (!stored.sr) return "no result stored back yet (radflow route has not answered this image)";
  const parts = stored.sc ? "SR and Grad-CAM Secondary Capture" : "SR only (no Secondary Capture)";
  return `${parts} stored back by version ${stored.version}: ${stored.decision}`;
}

function showImage(study, index) {
  const image = study.images[index];
  for (const button of $("study-images").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(Number(button.dataset.index) === index));
  }
  return render(image, `study ${study.study_uid}, image ${image.sop_instance_uid}`);
}

async function openStudy(uid) {
  show("error", false);
  show("result", false);
  show("study-images", false);
  delete $("result").dataset.ready;
  $("busy-name").textContent = `study ${uid}`;
  show("busy", true);
  let reply, body;
  try {
    reply = await fetch(`/api/pacs/studies/${encodeURIComponent(uid)}`);
    body = await reply.json();
  } catch (err) {
    showError(`the review page's own server did not answer (${err.message}); is radflow review still running?`);
    return;
  }
  if (!reply.ok) {
    showError(`study ${uid}: ${body.error}`);
    return;
  }
  if (!body.images.length) {
    showError(`study ${uid} holds no image to review (${body.not_reviewed} other instances)`);
    return;
  }
  const nav = $("study-images");
  nav.replaceChildren(...body.images.map((image, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = String(index);
    button.textContent = `image ${index + 1}: ${image.decision}${image.stored.sr ? " (stored)" : ""}`;
    button.addEventListener("click", () => showImage(body, index).catch((err) => showError(err.message)));
    return button;
  }));
  show("study-images", true);
  try {
    await showImage(body, 0);
  } catch (err) {
    showError(err.message);
  }
}

async function review(file) {
  show("error", false);
  show("result", false);
  show("study-images", false);
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
  $("pacs-form").addEventListener("submit", (event) => {
    event.preventDefault();
    openStudy($("study-uid").value.trim());
  });
  loadStatus();
}

setUp();
