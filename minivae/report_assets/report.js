// minivae report: the decoder's forward pass and the latent explorer. Read minivae/report.py
// first; the forward pass mirrors minivae/layers.py, one function per layer, each naming its
// Python twin. Batch 1 throughout: an image is a Float32Array in (C, H, W) row-major order.
"use strict";

const DATA = JSON.parse(document.getElementById("minivae-data").textContent);

function fromBase64(text, Type) {
  const bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  return new Type(bytes.buffer);
}

// ---- the decoder (minivae/layers.py)

// layers.Dense.forward: y = x @ W + b, with W (in, out) row-major.
function dense(x, layer, w) {
  const n = layer.inFeatures, m = layer.outFeatures;
  const y = new Float32Array(m);
  for (let o = 0; o < m; o++) y[o] = w[layer.b + o];
  for (let i = 0; i < n; i++) {
    const xi = x[i], row = layer.W + i * m;
    if (xi === 0) continue;
    for (let o = 0; o < m; o++) y[o] += xi * w[row + o];
  }
  return y;
}

// layers.ReLU.forward: max(x, 0).
function relu(x) { return x.map((v) => (v > 0 ? v : 0)); }

// layers.Tanh.forward.
function tanh(x) { return x.map(Math.tanh); }

// layers.sigmoid (and layers.Sigmoid.forward): (1 + tanh(x / 2)) / 2, no overflow.
function sigmoid(x) { return x.map((v) => 0.5 * (1 + Math.tanh(0.5 * v))); }

// layers.ConvTranspose2d.forward (conv.conv_transpose2d): x (Cin, H, W), W (Cin, Cout, kh, kw),
// y (Cout, Ho, Wo) with Ho = (H - 1) s - 2p + kh: every input pixel spreads through the kernel,
// y[co, s*h + i - p, s*w + j - p] += x[ci, h, w] * W[ci, co, i, j], then the bias.
function convTranspose2d(x, layer, w, hw) {
  const [H, W] = hw, s = layer.stride, p = layer.padding, kh = layer.kh, kw = layer.kw;
  const cin = layer.inChannels, cout = layer.outChannels;
  const Ho = (H - 1) * s - 2 * p + kh, Wo = (W - 1) * s - 2 * p + kw;
  const y = new Float32Array(cout * Ho * Wo);
  for (let co = 0; co < cout; co++) y.fill(w[layer.b + co], co * Ho * Wo, (co + 1) * Ho * Wo);
  for (let ci = 0; ci < cin; ci++) {
    for (let h = 0; h < H; h++) {
      for (let x0 = 0; x0 < W; x0++) {
        const v = x[(ci * H + h) * W + x0];
        if (v === 0) continue;
        for (let co = 0; co < cout; co++) {
          const k = layer.W + ((ci * cout + co) * kh) * kw;
          for (let i = 0; i < kh; i++) {
            const r = s * h + i - p;
            if (r < 0 || r >= Ho) continue;
            for (let j = 0; j < kw; j++) {
              const c = s * x0 + j - p;
              if (c < 0 || c >= Wo) continue;
              y[(co * Ho + r) * Wo + c] += v * w[k + i * kw + j];
            }
          }
        }
      }
    }
  }
  return [y, [Ho, Wo]];
}

const WEIGHTS = fromBase64(DATA.decoder.weights, Float32Array);

// models.VAE.decode, then the sigmoid: z (latentDim) -> pixel probabilities (height * width).
function decode(z) {
  let x = Float32Array.from(z), hw = null;
  for (const layer of DATA.decoder.layers) {
    if (layer.type === "Dense") x = dense(x, layer, WEIGHTS);
    else if (layer.type === "ReLU") x = relu(x);
    else if (layer.type === "Tanh") x = tanh(x);
    else if (layer.type === "Sigmoid") x = sigmoid(x);
    else if (layer.type === "Reshape") hw = layer.shape.slice(1);   // layers.Reshape: (C, H, W)
    else if (layer.type === "ConvTranspose2d") [x, hw] = convTranspose2d(x, layer, WEIGHTS, hw);
    else throw new Error("no JavaScript twin of " + layer.type);
  }
  return sigmoid(x);
}

window.minivae = {latentDim: DATA.latentDim, height: DATA.height, width: DATA.width, decode,
                  ready: Promise.resolve()};

// ---- the explorer

const POINTS = {
  coords: fromBase64(DATA.points.coords, Float32Array),
  means: fromBase64(DATA.points.means, Float32Array),
  labels: fromBase64(DATA.points.labels, Uint8Array),
  images: fromBase64(DATA.points.images, Uint8Array),
};
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf"];
const d = DATA.latentDim, n = DATA.points.count;
const z = new Float32Array(d);
const plane = document.getElementById("plane"), ctx = plane.getContext("2d");
let range = null;               // [u0, u1, v0, v1] of the plane shown

function extent() {
  let u0 = Infinity, u1 = -Infinity, v0 = Infinity, v1 = -Infinity;
  for (let k = 0; k < n; k++) {
    const u = POINTS.coords[2 * k], v = POINTS.coords[2 * k + 1];
    u0 = Math.min(u0, u); u1 = Math.max(u1, u); v0 = Math.min(v0, v); v1 = Math.max(v1, v);
  }
  const pu = 0.08 * (u1 - u0 || 1), pv = 0.08 * (v1 - v0 || 1);
  return [u0 - pu, u1 + pu, v0 - pv, v1 + pv];
}

const toCanvas = (u, v) => [(u - range[0]) / (range[1] - range[0]) * plane.width,
                            (1 - (v - range[2]) / (range[3] - range[2])) * plane.height];
const fromCanvas = (x, y) => [range[0] + x / plane.width * (range[1] - range[0]),
                              range[2] + (1 - y / plane.height) * (range[3] - range[2])];

// The plane's point (u, v) in the latent space: z = centre + u a1 + v a2 (visualise.py's axes).
function planeToZ(u, v) {
  for (let i = 0; i < d; i++) z[i] = DATA.centre[i] + u * DATA.axes[0][i] + v * DATA.axes[1][i];
}

function zToPlane() {
  let u = 0, v = 0;
  for (let i = 0; i < d; i++) {
    u += (z[i] - DATA.centre[i]) * DATA.axes[0][i];
    v += (z[i] - DATA.centre[i]) * DATA.axes[1][i];
  }
  return [u, v];
}

function drawPlane() {
  ctx.clearRect(0, 0, plane.width, plane.height);
  for (let k = 0; k < n; k++) {
    const [x, y] = toCanvas(POINTS.coords[2 * k], POINTS.coords[2 * k + 1]);
    ctx.fillStyle = COLOURS[POINTS.labels[k] % 10];
    ctx.globalAlpha = 0.6;
    ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
  }
  ctx.globalAlpha = 1;
  const [x, y] = toCanvas(...zToPlane());
  ctx.strokeStyle = "#000";
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  ctx.moveTo(x - 9, y); ctx.lineTo(x + 9, y); ctx.moveTo(x, y - 9); ctx.lineTo(x, y + 9);
  ctx.stroke();
}

function drawImage(canvas, pixels) {     // pixels: height * width values in [0, 1]
  const c = canvas.getContext("2d"), img = c.createImageData(DATA.width, DATA.height);
  for (let i = 0; i < pixels.length; i++) {
    const g = Math.round(255 * Math.min(1, Math.max(0, pixels[i])));
    img.data.set([g, g, g, 255], 4 * i);
  }
  const tmp = document.createElement("canvas");
  tmp.width = DATA.width; tmp.height = DATA.height;
  tmp.getContext("2d").putImageData(img, 0, 0);
  c.imageSmoothingEnabled = false;
  c.drawImage(tmp, 0, 0, canvas.width, canvas.height);
}

const sliders = [];
function buildSliders() {
  const box = document.getElementById("sliders");
  for (const dim of DATA.klOrder) {
    const row = document.createElement("label");
    const input = document.createElement("input");
    Object.assign(input, {type: "range", min: -4, max: 4, step: 0.01, value: 0});
    input.addEventListener("input", () => { z[dim] = parseFloat(input.value); update(); });
    const out = document.createElement("output");
    row.append(`z[${dim}] (KL ${DATA.latent.kl[dim].toFixed(2)})`, input, out);
    box.append(row);
    sliders[dim] = [input, out];
  }
}

function update() {
  const t0 = performance.now();
  drawImage(document.getElementById("decoded"), decode(z));
  document.getElementById("timing").textContent =
    `decoded in ${(performance.now() - t0).toFixed(1)} ms`;
  for (let i = 0; i < d; i++) {
    sliders[i][0].value = z[i];
    sliders[i][1].textContent = z[i].toFixed(2);
  }
  drawPlane();
}

function nearestPoint(x, y) {
  let best = -1, bestDist = 36;          // within 6 canvas pixels
  for (let k = 0; k < n; k++) {
    const [px, py] = toCanvas(POINTS.coords[2 * k], POINTS.coords[2 * k + 1]);
    const dist = (px - x) ** 2 + (py - y) ** 2;
    if (dist < bestDist) { best = k; bestDist = dist; }
  }
  return best;
}

function showTestImage(k) {
  const side = DATA.height, pad = DATA.pad, pixels = new Float32Array(side * side);
  for (let r = 0; r < 28; r++) {
    for (let c = 0; c < 28; c++) {
      pixels[(r + pad) * side + c + pad] = POINTS.images[k * 784 + r * 28 + c] / 255;
    }
  }
  drawImage(document.getElementById("original"), pixels);
  const name = DATA.classNames[POINTS.labels[k]] ?? POINTS.labels[k];
  document.getElementById("original-caption").textContent =
    `test image ${DATA.points.testIndex[k]} (${name})`;
}

function canvasXY(event) {
  const r = plane.getBoundingClientRect();
  return [(event.clientX - r.left) * plane.width / r.width,
          (event.clientY - r.top) * plane.height / r.height];
}

function startExplorer() {
  range = extent();
  buildSliders();
  const legend = document.getElementById("legend");
  DATA.classNames.forEach((name, k) => {
    const item = document.createElement("span");
    item.innerHTML = `<i style="background:${COLOURS[k % 10]}"></i>`;
    item.append(name);
    legend.append(item);
  });
  plane.addEventListener("mousemove", (e) => { planeToZ(...fromCanvas(...canvasXY(e))); update(); });
  plane.addEventListener("click", (e) => {
    const k = nearestPoint(...canvasXY(e));
    if (k < 0) return;
    z.set(POINTS.means.subarray(k * d, (k + 1) * d));
    showTestImage(k);
    update();
  });
  plane.addEventListener("keydown", (e) => {
    const step = 0.02 * (range[1] - range[0]);
    const moves = {ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, step],
                   ArrowDown: [0, -step]};
    if (!(e.key in moves)) return;
    e.preventDefault();
    const [u, v] = zToPlane();
    planeToZ(u + moves[e.key][0], v + moves[e.key][1]);
    update();
  });
  planeToZ(0, 0);
  update();
}

startExplorer();
