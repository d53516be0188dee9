// Headless-browser test of the operator console, run by the Rust integration test as
// `node tests/browser/console.mjs` against a running `fulfilld serve` (or any host that speaks the
// console contract). Drives the system chromium through puppeteer-core (which downloads nothing).
//
// Environment:
//   CONSOLE_URL     the admin listener, e.g. http://127.0.0.1:8081 (required)
//   ADMIN_TOKEN     the host's FULFILLD_ADMIN_TOKEN (required)
//   ORDER_ID        an Order with a completed job whose journal has host calls (required)
//   DEAD_ORDER_ID   an Order whose job is a dead letter of kind `job` (required; it gets requeued)
//   SCREENSHOT_DIR  where the PNGs go (default: a new directory under the system temp dir)
//   CHROMIUM        the browser binary (default: the first of chromium, chromium-browser,
//                   google-chrome on PATH)
//
// Prints `ok - <step>` per step and exits 0; on a failure prints what was expected and what was
// found, saves failure.png and exits 1. Besides the steps' own checks, the run fails when the page
// logs a console error or a CSP violation, throws, or requests anything from another origin.
// An API error answer (4xx/5xx under /admin/) that the page shows is expected, not a failure.

import { accessSync, constants, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';

const TIMEOUT = 30_000;

class Failure extends Error {
  constructor(expected, found) {
    super(`expected ${expected}`);
    this.expected = expected;
    this.found = found;
  }
}

function required(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`error: ${name} is not set (see the header of tests/browser/console.mjs)`);
    process.exit(2);
  }
  return v;
}

function findBrowser() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  for (const name of ['chromium', 'chromium-browser', 'google-chrome']) {
    for (const dir of (process.env.PATH || '').split(path.delimiter).filter(Boolean)) {
      const candidate = path.join(dir, name);
      try {
        accessSync(candidate, constants.X_OK);
        return candidate;
      } catch {
        // not here
      }
    }
  }
  console.error('error: no chromium, chromium-browser or google-chrome on PATH; set CHROMIUM or install Debian\'s chromium');
  process.exit(2);
}

const CONSOLE_URL = required('CONSOLE_URL').replace(/\/+$/, '');
const ADMIN_TOKEN = required('ADMIN_TOKEN');
const ORDER_ID = required('ORDER_ID');
const DEAD_ORDER_ID = required('DEAD_ORDER_ID');
const SCREENSHOT_DIR = process.env.SCREENSHOT_DIR || mkdtempSync(path.join(tmpdir(), 'fulfilld-console-shots-'));
const CHROMIUM = findBrowser();
const ORIGIN = new URL(CONSOLE_URL).origin;
mkdirSync(SCREENSHOT_DIR, { recursive: true });

// What the page did that it must not: console errors, uncaught exceptions, CSP violations,
// requests to another origin. Checked after every step.
const problems = [];
const apiErrors = [];

let browser;
let page;
const userDataDir = mkdtempSync(path.join(tmpdir(), 'fulfilld-console-profile-'));

async function shot(name) {
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, name), fullPage: true });
}

/** What the page shows right now, for "found" in a failure. */
async function pageState() {
  try {
    return await page.evaluate(() => {
      const msg = document.querySelector('#message');
      const view = document.querySelector('#view');
      return {
        hash: location.hash,
        message: msg && !msg.hidden ? msg.textContent.trim() : null,
        view: view ? `${view.dataset.view || '?'}/${view.dataset.state || '?'}: ${view.innerText.replace(/\s+/g, ' ').trim().slice(0, 400)}` : null,
      };
    });
  } catch (e) {
    return `(page state unavailable: ${e.message})`;
  }
}

/** Waits for fn(...args) in the page to be truthy; on timeout fails with `expected` and what is there. */
async function waitFor(expected, fn, ...args) {
  try {
    const handle = await page.waitForFunction(fn, { timeout: TIMEOUT, polling: 100 }, ...args);
    return await handle.jsonValue();
  } catch (e) {
    if (e instanceof Failure) throw e;
    throw new Failure(expected, { error: e.message.split('\n')[0], page: await pageState() });
  }
}

function checkProblems() {
  if (problems.length) {
    throw new Failure('no console error, CSP violation, page error or foreign request', problems.slice());
  }
}

async function step(name, fn) {
  try {
    await fn();
    checkProblems();
    console.log(`ok - ${name}`);
  } catch (e) {
    console.log(`not ok - ${name}`);
    if (e instanceof Failure) {
      console.log(`  expected: ${e.expected}`);
      console.log(`  found:    ${typeof e.found === 'string' ? e.found : JSON.stringify(e.found, null, 2).replace(/\n/g, '\n  ')}`);
    } else {
      console.log(`  error: ${e.stack || e}`);
    }
    if (problems.length) console.log(`  page problems: ${JSON.stringify(problems, null, 2).replace(/\n/g, '\n  ')}`);
    try {
      await shot('failure.png');
      console.log(`  screenshot: ${path.join(SCREENSHOT_DIR, 'failure.png')}`);
    } catch (se) {
      console.log(`  (no failure screenshot: ${se.message})`);
    }
    await finish(1);
  }
}

async function finish(code) {
  try { if (browser) await browser.close(); } catch { /* already gone */ }
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(code);
}

/** Types a search into the header box and waits for the order page of `id` to be painted. */
async function search(id) {
  await page.click('#search-input', { clickCount: 3 });
  await page.$eval('#search-input', (el) => { el.value = ''; });
  await page.type('#search-input', id);
  await page.click('#search-button');
  return waitFor(`the order page for ${id} (jobs shown)`, (wanted) => {
    const view = document.querySelector('#view');
    if (!view || view.dataset.view !== 'order' || location.hash !== `#/orders/${encodeURIComponent(wanted)}`) return false;
    if (view.dataset.state === 'error') {
      const err = document.querySelector('[data-testid=order-error]');
      return { error: err ? err.innerText.replace(/\s+/g, ' ').trim() : 'error' };
    }
    return view.dataset.state === 'ready' && document.querySelectorAll('[data-testid=job]').length > 0;
  }, id);
}

/** Every job on the order page: its state and the events of its journal. */
function jobsOnPage() {
  return page.$$eval('[data-testid=job]', (cards) => cards.map((c) => ({
    state: c.dataset.state,
    event_uuid: c.dataset.eventUuid,
    events: Array.from(c.querySelectorAll('[data-testid=journal-entry]')).map((e) => e.dataset.event),
    calls: Array.from(c.querySelectorAll('[data-testid=journal-entry][data-event=call]')).map((e) => e.innerText.replace(/\s+/g, ' ').trim()),
  })));
}

/** The dead-letter row of DEAD_ORDER_ID's job (kind job), as {id, disabled, title} or null. */
function deadRow(orderId) {
  const row = Array.from(document.querySelectorAll('[data-testid=dead-letter]'))
    .find((r) => r.dataset.orderId === orderId && r.dataset.kind === 'job');
  if (!row) return null;
  const b = row.querySelector('[data-testid=requeue]');
  return { id: row.dataset.id, button: !!b, disabled: b ? b.disabled : null, title: b ? b.title : null };
}

async function main() {
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true, // --headless=new
    userDataDir,
    args: [
      '--no-sandbox',
      '--disable-dev-shm-usage',
      '--disable-gpu',
      '--no-first-run',
      '--no-default-browser-check',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--lang=en-US',
    ],
    defaultViewport: { width: 1360, height: 900 },
    protocolTimeout: 60_000,
  });
  page = await browser.newPage();
  page.setDefaultTimeout(TIMEOUT);

  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const loc = msg.location() || {};
    const text = msg.text();
    // Chrome logs every 4xx/5xx answer as "Failed to load resource"; an API error the page
    // shows is part of the contract, anything else (a missing asset) is a problem.
    if (/^Failed to load resource: the server responded with a status of [45]\d\d/.test(text) && loc.url) {
      const u = new URL(loc.url);
      if (u.origin === ORIGIN && u.pathname.startsWith('/admin/')) {
        apiErrors.push(`${text} (${u.pathname})`);
        return;
      }
    }
    problems.push({ console_error: text, url: loc.url || null });
  });
  page.on('pageerror', (err) => problems.push({ page_error: String(err && err.message ? err.message : err) }));
  page.on('request', (req) => {
    const url = req.url();
    if (url.startsWith('data:')) return;
    let origin;
    try { origin = new URL(url).origin; } catch { origin = url; }
    if (origin !== ORIGIN) problems.push({ foreign_request: url });
  });
  page.on('dialog', (d) => d.accept());
  await page.exposeFunction('__consoleTestCsp', (v) => problems.push({ csp_violation: v }));
  await page.evaluateOnNewDocument(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__consoleTestCsp(`${e.violatedDirective} blocked ${e.blockedURI || '(inline)'} at ${e.sourceFile || '?'}:${e.lineNumber || '?'}`);
    });
  });

  const overview = await fetch(`${CONSOLE_URL}/admin/overview`).then((r) => r.json()).catch(() => null);
  const channel = overview && overview.subscription ? overview.subscription.channel : null;

  await step('overview renders health and subscription', async () => {
    const res = await page.goto(`${CONSOLE_URL}/console`, { waitUntil: 'domcontentloaded', timeout: TIMEOUT });
    if (!res || res.status() !== 200) throw new Failure('GET /console answers 200', res ? res.status() : 'no response');
    const csp = res.headers()['content-security-policy'];
    if (!csp) throw new Failure('/console served with a Content-Security-Policy header', res.headers());
    const shown = await waitFor('#health-status and #sub-channel filled in', () => {
      const st = document.querySelector('#health-status');
      const ch = document.querySelector('#sub-channel');
      if (!st || !ch || !st.textContent.trim() || !ch.textContent.trim()) return false;
      return { status: st.textContent.trim(), channel: ch.textContent.trim() };
    });
    if (!['ok', 'degraded'].includes(shown.status)) throw new Failure('health status ok or degraded', shown);
    if (channel && shown.channel !== channel) throw new Failure(`channel ${channel} (as /admin/overview says)`, shown);
    if (!channel && shown.channel === '—') throw new Failure('a channel shown', shown);
    await shot('overview.png');
  });

  await step(`order ${ORDER_ID}: a completed job with enqueued, claimed, call and finished in its journal`, async () => {
    const r = await search(ORDER_ID);
    if (r && r.error) throw new Failure(`jobs for ${ORDER_ID}`, r);
    const jobs = await jobsOnPage();
    const good = jobs.find((j) => j.state === 'completed' &&
      ['enqueued', 'claimed', 'call', 'finished'].every((ev) => j.events.includes(ev)));
    if (!good) throw new Failure('a job in state completed whose journal has enqueued, claimed, call and finished', jobs);
    if (!good.calls.every((c) => c.length > 0)) throw new Failure('call rows with their text', good.calls);
    await shot('order.png');
  });

  let deadId = null;
  await step(`dead letters: ${DEAD_ORDER_ID}'s job cannot be requeued without the token`, async () => {
    await page.click('#nav-dead-letters');
    const row = await waitFor(`a dead letter of kind job for ${DEAD_ORDER_ID}`, (id) => {
      const view = document.querySelector('#view');
      if (!view || view.dataset.view !== 'dead-letters' || view.dataset.state !== 'ready') return false;
      const r = Array.from(document.querySelectorAll('[data-testid=dead-letter]'))
        .find((x) => x.dataset.orderId === id && x.dataset.kind === 'job');
      return r ? { id: r.dataset.id } : false;
    }, DEAD_ORDER_ID);
    deadId = row.id;
    const r = await page.evaluate(deadRow, DEAD_ORDER_ID);
    if (!r.button) {
      const note = await page.$eval('[data-testid=read-only-note]', (n) => n.textContent).catch(() => null);
      throw new Failure('a Requeue button on the row (the host must be writable)', { row: r, note });
    }
    if (!r.disabled) {
      // Enabled without a token: clicking must show the host's 401 answer.
      await page.evaluate((id) => {
        const row = Array.from(document.querySelectorAll('[data-testid=dead-letter]')).find((x) => x.dataset.id === id);
        row.querySelector('[data-testid=requeue]').click();
      }, deadId);
      await waitFor('an error message after a requeue without a token', () => {
        const m = document.querySelector('#message');
        return m && !m.hidden && m.dataset.kind === 'error' && /401/.test(m.textContent);
      });
    } else if (!/token/i.test(r.title || '')) {
      throw new Failure('the disabled Requeue button to say the admin token is needed (title)', r);
    }
  });

  await step(`dead letters: requeue ${DEAD_ORDER_ID}'s job with the admin token`, async () => {
    await page.type('#token-input', ADMIN_TOKEN);
    await page.click('#token-save');
    await waitFor('the Requeue button enabled once the token is saved', (id) => {
      const row = Array.from(document.querySelectorAll('[data-testid=dead-letter]')).find((x) => x.dataset.id === id);
      const b = row && row.querySelector('[data-testid=requeue]');
      return !!b && !b.disabled;
    }, deadId);
    await page.evaluate((id) => {
      const row = Array.from(document.querySelectorAll('[data-testid=dead-letter]')).find((x) => x.dataset.id === id);
      row.querySelector('[data-testid=requeue]').click();
    }, deadId);
    const msg = await waitFor('a success message after Requeue', () => {
      const m = document.querySelector('#message');
      if (!m || m.hidden || !/requeue/i.test(m.textContent)) return false;
      return { kind: m.dataset.kind, text: m.textContent.trim() };
    });
    if (msg.kind !== 'ok') throw new Failure('a success message after Requeue', msg);
    await waitFor(`the dead letter ${deadId} gone from the list after the refresh`, (id) => {
      const view = document.querySelector('#view');
      return view && view.dataset.view === 'dead-letters' && view.dataset.state === 'ready' &&
        !document.querySelector('[data-busy]') &&
        !Array.from(document.querySelectorAll('[data-testid=dead-letter]')).some((x) => x.dataset.id === id);
    }, deadId);
    await shot('dead-letters.png');
  });

  await step(`order ${DEAD_ORDER_ID}: the journal shows requeued`, async () => {
    const r = await search(DEAD_ORDER_ID);
    if (r && r.error) throw new Failure(`jobs for ${DEAD_ORDER_ID}`, r);
    // The order page refreshes itself every 5 s: wait for the entry rather than read once.
    await waitFor(`a requeued entry in a journal of ${DEAD_ORDER_ID}`, () =>
      !!document.querySelector('[data-testid=journal-entry][data-event=requeued]'))
      .catch(async (e) => { throw new Failure(e.expected, await jobsOnPage()); });
    await shot('requeued.png');
  });

  await step('components page renders', async () => {
    await page.click('#nav-components');
    const r = await waitFor('the components page (versions, or the no-registry note)', () => {
      const view = document.querySelector('#view');
      if (!view || view.dataset.view !== 'components') return false;
      if (document.querySelector('[data-testid=components-error]')) return { registry: false };
      if (view.dataset.state !== 'ready') return false;
      const rows = Array.from(document.querySelectorAll('[data-testid=component]'));
      return { registry: true, versions: rows.length, active: rows.filter((x) => x.dataset.active === 'true').length };
    });
    if (r.registry && r.versions > 0 && r.active !== 1) throw new Failure('exactly one version marked active', r);
    await shot('components.png');
  });

  console.log(`# screenshots in ${SCREENSHOT_DIR}${apiErrors.length ? `; API error answers shown: ${apiErrors.length}` : ''}`);
  await finish(0);
}

main().catch(async (e) => {
  console.log(`not ok - driver: ${e.stack || e}`);
  try { if (page) await shot('failure.png'); } catch { /* no page */ }
  await finish(1);
});
