// Drives clip-serve's page in headless Chromium: a Chinese text query whose top hit must be the one
// clip-query gives, an empty query whose error must be shown, an image upload (file picker, then
// drag and drop) that must find itself first, and a screenshot of each tab.
//   node serve.test.mjs --url http://127.0.0.1:PORT --query TEXT --expect-id ID --image FILE --image-id ID --shots DIR
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];
for (const k of ['url', 'query', 'expect-id', 'image', 'image-id', 'shots'])
  if (!args[k]) { console.error(`missing --${k}`); process.exit(2); }
const url = new URL(args.url);
assert.equal(url.hostname, '127.0.0.1', 'the test only ever connects to 127.0.0.1');

const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'clip-serve-e2e-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1200, height: 820 },
  deviceScaleFactor: 1,
});
let failed = 0;
async function step(name, fn) {
  try {
    await fn();
    console.log('ok:', name);
  } catch (err) {
    failed++;
    console.error('FAIL:', name, '\n ', err.message);
  }
}

const page = ctx.pages()[0] || await ctx.newPage();
page.setDefaultTimeout(20000);
// Nothing but the server under test may be contacted.
await page.route('**/*', (route) => {
  const u = new URL(route.request().url());
  if (u.host === url.host) return route.continue();
  console.error('blocked request to', u.href);
  failed++;
  return route.abort();
});
const consoleErrors = [];
page.on('pageerror', (e) => consoleErrors.push(e.message));

fs.mkdirSync(args.shots, { recursive: true });
await page.goto(args.url);
await page.waitForSelector('body[data-ready="1"]');

await step('page shows both tabs and the store', async () => {
  assert.equal(await page.textContent('#tab-text'), '文本搜图');
  assert.equal(await page.textContent('#tab-image'), '图片搜图');
  assert.match(await page.textContent('#info'), /200 张图片/);
});

async function firstCard() {
  await page.waitForSelector('#results .card');
  return page.$eval('#results .card', (c) => ({
    id: c.dataset.id, rank: c.querySelector('.rank').textContent, score: Number(c.querySelector('.score').textContent),
  }));
}

async function waitThumbs() {
  await page.waitForFunction(() => [...document.querySelectorAll('#results .card img')]
    .every((i) => i.complete && i.naturalWidth > 0));
}

await step('text query (Chinese) ranks the expected image first', async () => {
  await page.fill('#text-input', args.query);
  await page.selectOption('#text-k', '10');
  await page.click('#text-submit');
  const c = await firstCard();
  assert.equal(c.id, args['expect-id']);
  assert.equal(c.rank, '#1');
  assert.equal(await page.locator('#results .card').count(), 10);
  assert.equal(await page.isVisible('#error'), false);
  await waitThumbs();
  await page.screenshot({ path: path.join(args.shots, 'text-search.png'), fullPage: false });
});

await step('empty query shows the server\'s error and no results', async () => {
  await page.fill('#text-input', '');
  await page.click('#text-submit');
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await page.textContent('#error'), /the text is empty/);
  assert.equal(await page.locator('#results .card').count(), 0);
});

await step('uploaded image (file picker) is ranked first, as itself', async () => {
  await page.click('#tab-image');
  await page.selectOption('#image-k', '10');
  await page.setInputFiles('#image-input', args.image);
  const c = await firstCard();
  assert.equal(c.id, args['image-id']);
  assert.ok(c.score > 0.999, `score ${c.score}`);
  assert.equal(await page.isVisible('#preview'), true);
  await waitThumbs();
  await page.screenshot({ path: path.join(args.shots, 'image-search.png'), fullPage: false });
});

await step('dropped image is searched too', async () => {
  await page.$eval('#results', (r) => r.replaceChildren());
  const b64 = fs.readFileSync(args.image).toString('base64');
  await page.evaluate(async (data) => {
    const bytes = Uint8Array.from(atob(data), (ch) => ch.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([bytes], 'dropped.jpg', { type: 'image/jpeg' }));
    document.getElementById('drop').dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, b64);
  const c = await firstCard();
  assert.equal(c.id, args['image-id']);
  assert.match(await page.textContent('#status'), /dropped\.jpg/);
});

await step('no script errors', async () => assert.deepEqual(consoleErrors, []));

await ctx.close();
fs.rmSync(profile, { recursive: true, force: true });
console.log(failed ? `${failed} failed` : 'all passed');
process.exit(failed ? 1 : 0);
