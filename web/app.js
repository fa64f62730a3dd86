// The search page: two tabs over the JSON API (/api/search/text, /api/search/image), results as a
// gallery of thumbnails from /api/image/{id}?thumb=1. No external resources.
'use strict';

const $ = (id) => document.getElementById(id);
let imageFile = null;
let maxUpload = 8 << 20;

function showError(msg) {
  const e = $('error');
  e.textContent = msg;
  e.hidden = !msg;
}

function setStatus(msg) { $('status').textContent = msg || ''; }

function renderResults(data) {
  const box = $('results');
  box.replaceChildren();
  for (const r of data.results) {
    const card = document.createElement('figure');
    card.className = 'card';
    card.dataset.id = r.id;
    card.dataset.rank = r.rank;
    const img = document.createElement('img');
    img.loading = 'lazy';
    img.alt = 'image ' + r.id;
    img.src = '/api/image/' + encodeURIComponent(r.id) + '?thumb=1';
    img.onerror = () => { img.classList.add('missing'); };
    const rank = document.createElement('span');
    rank.className = 'rank';
    rank.textContent = '#' + r.rank;
    const cap = document.createElement('figcaption');
    const id = document.createElement('span');
    id.className = 'id';
    id.textContent = 'id ' + r.id;
    const score = document.createElement('span');
    score.className = 'score';
    score.textContent = r.score.toFixed(4);
    cap.append(id, score);
    card.append(img, rank, cap);
    box.append(card);
  }
  setStatus(data.results.length
    ? `“${data.query}”：${data.results.length} 个结果，用时 ${data.took_ms.toFixed(1)} ms`
    : `“${data.query}”：没有结果`);
}

async function post(url, body, isForm) {
  const opts = { method: 'POST', body };
  if (!isForm) opts.headers = { 'Content-Type': 'application/json' };
  let res;
  try {
    res = await fetch(url, opts);
  } catch (err) {
    throw new Error('无法连接服务器：' + err.message);
  }
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error((data && data.error) || ('HTTP ' + res.status));
  return data;
}

async function run(fn) {
  showError('');
  setStatus('搜索中…');
  document.body.classList.add('busy');
  try {
    renderResults(await fn());
  } catch (err) {
    $('results').replaceChildren();
    setStatus('');
    showError('出错了：' + err.message);
  } finally {
    document.body.classList.remove('busy');
  }
}

function searchText() {
  // An empty query goes to the server too: its error message is the one shown.
  const text = $('text-input').value;
  run(() => post('/api/search/text', JSON.stringify({ text, k: Number($('text-k').value) })));
}

function setImage(file) {
  if (!file) return;
  showError('');
  if (!file.type.startsWith('image/')) { showError('请选择图片文件（not an image: ' + file.name + '）'); return; }
  if (file.size > maxUpload) {
    showError(`图片太大：${(file.size / 1048576).toFixed(1)} MB，上限 ${(maxUpload / 1048576).toFixed(1)} MB`);
    return;
  }
  imageFile = file;
  const p = $('preview');
  if (p.src) URL.revokeObjectURL(p.src);
  p.src = URL.createObjectURL(file);
  p.hidden = false;
  $('drop').classList.add('has-image');
  $('drop-text').textContent = file.name;
  $('image-submit').disabled = false;
  searchImage();
}

function searchImage() {
  if (!imageFile) { showError('请先选择一张图片（no image chosen）'); return; }
  const form = new FormData();
  form.append('image', imageFile, imageFile.name);
  form.append('k', $('image-k').value);
  run(() => post('/api/search/image', form, true));
}

function switchTab(btn) {
  for (const t of document.querySelectorAll('.tab')) {
    const on = t === btn;
    t.classList.toggle('active', on);
    t.setAttribute('aria-selected', on);
    $(t.dataset.panel).hidden = !on;
  }
  showError('');
  setStatus('');
  $('results').replaceChildren();
}

function init() {
  for (const t of document.querySelectorAll('.tab')) t.addEventListener('click', () => switchTab(t));
  $('text-form').addEventListener('submit', (e) => { e.preventDefault(); searchText(); });
  $('image-input').addEventListener('change', (e) => setImage(e.target.files[0]));
  $('image-submit').addEventListener('click', searchImage);
  const drop = $('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files.length) setImage(e.dataTransfer.files[0]);
  });
  for (const q of ['黄色的五角星在上方', '浅蓝色背景上的紫色十字', '红色的圆形']) {
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'chip';
    b.textContent = q;
    b.addEventListener('click', () => { $('text-input').value = q; searchText(); });
    $('examples').append(b);
  }
  fetch('/api/health').then((r) => r.json()).then((h) => {
    maxUpload = h.limits.max_upload_bytes;
    $('info').textContent = `${h.model} · ${h.store.size} 张图片 · v${h.version}`;
    document.body.dataset.ready = '1';
  }).catch(() => { $('info').textContent = '服务器不可用'; });
}

init();
