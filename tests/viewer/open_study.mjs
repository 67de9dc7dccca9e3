// Open a study in OHIF with Debian's Chromium (playwright-core, headless) as a radiologist would:
// the study's viewer URL, the measurements panel shown, a double-click on the thumbnail of one
// series. Writes what is on screen to OUT/screen.json and screenshots to OUT/*.png. Judging what
// was seen is the caller's job (tests/acceptance/test_viewer.py); this script fails only when it cannot get
// that far (no thumbnail for the series, the browser does not start).
//
//   node open_study.mjs --url http://127.0.0.1:PORT --study UID --series N --out DIR
//        [--sr]               the series is an SR: wait for its first measurement to be drawn
//                             over its image (or for OHIF's crash notice), read that text
//        [--track]            an SR: then answer "Yes" to OHIF's "continue tracking
//                             measurements?" prompt, so the measurements panel lists them all
//        [--chromium PATH]    default /usr/bin/chromium; never downloads a browser
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: args } = parseArgs({
  options: {
    url: { type: 'string' },
    study: { type: 'string' },
    series: { type: 'string' },
    out: { type: 'string' },
    sr: { type: 'boolean', default: false },
    track: { type: 'boolean', default: false },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
  },
});
for (const name of ['url', 'study', 'series', 'out']) {
  if (!args[name]) throw new Error(`--${name} is required`);
}

const [WIDTH, HEIGHT] = [1280, 800];
const STEP_MS = 120_000; // the most one step may take on a loaded 2-core machine
const CRASH = 'Something went wrong';
const PANE = '[data-cy="viewport-pane"]';
const ROWS = '[data-cy^="measurement-table-row-"]'; // a row with its details

const browser = await chromium.launch({
  executablePath: args.chromium,
  headless: true,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-dev-shm-usage', // containers' small /dev/shm crashes renderers otherwise
  ],
});
const errors = [];
const consoleLines = [];
const notes = []; // what the script did beyond the plain steps
const screenshots = {};
try {
  const page = await browser.newPage({ viewport: { width: WIDTH, height: HEIGHT } });
  page.setDefaultTimeout(STEP_MS);
  page.on('pageerror', error => errors.push(`pageerror: ${error.message}`));
  page.on('console', message => {
    const line = `${message.type()}: ${message.text()}`;
    consoleLines.push(line);
    if (message.type() === 'error') errors.push(`console: ${message.text()}`);
  });
  // A returning user: OHIF's first-visit tour (a modal over the viewer) was seen before.
  await page.addInitScript(() =>
    localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))
  );

  await page.goto(`${args.url}/viewer?StudyInstanceUIDs=${encodeURIComponent(args.study)}`);
  const thumbnails = page.locator('[data-cy^="study-browser-thumbnail"]');
  await thumbnails.first().waitFor();
  await settle(page);
  // OHIF makes one display set (thumbnail) per image of a CR or DX series: take the first.
  await thumbnails.and(page.locator(`[data-series="${args.series}"]`)).first().dblclick();
  if (args.sr) {
    // OHIF's SR viewport shows the image of the SR's first measurement with its region and
    // text (its arrows cannot reach measurements on other images of a CR series, each of
    // which is a display set of its own), or a crash notice.
    const drawn = [`${PANE} svg text`, `text=${CRASH}`];
    // OHIF 3.13 often adds the SR's annotations after the viewport's last render: they exist
    // (in cornerstoneTools' annotation state, on the image shown) but stay undrawn until the
    // viewport renders again, as it does on any interaction. Resizing the window by a pixel
    // renders it; try that a few times before giving up (the caller then sees no text).
    for (let attempt = 0; attempt < 6 && !(await waitForAny(page, drawn, 10_000)); attempt++) {
      notes.push(`SR annotations not drawn after ${10 * (attempt + 1)} s: window resized`);
      await page.setViewportSize({ width: WIDTH - 1, height: HEIGHT });
      await page.setViewportSize({ width: WIDTH, height: HEIGHT });
    }
  }
  await settle(page);
  const cine = page.locator('[data-cy="cine-player-close"]');
  if (!args.sr && (await cine.isVisible())) {
    // OHIF opens its cine player over a series of several images; a reader closes it.
    // (Not for an SR: any click would dismiss its tracking prompt.)
    await cine.click();
    await settle(page);
  }
  await shoot(page, 'page', 'viewport');
  const text = await visibleText(page);
  const overlay = await page.locator(PANE).first().innerText();
  const annotationLines = await svgLines(page);

  let trackedText = '';
  let measurementRows = [];
  if (args.track) {
    const yes = page.getByRole('button', { name: 'Yes', exact: true });
    if (await yes.isVisible()) {
      await yes.click();
      await settle(page);
      // The right-hand panel with the tracked measurements, if OHIF did not open it.
      if (!(await page.locator(ROWS).first().isVisible())) {
        await page.locator('[data-cy="side-panel-header-right"]').click();
        await page.locator('[data-cy="trackedMeasurements-btn"]').click();
      }
      await waitForAny(page, [ROWS], 20_000);
      await settle(page);
    }
    trackedText = await visibleText(page);
    measurementRows = await page.locator(ROWS).evaluateAll(nodes => nodes.map(n => n.innerText));
    await shoot(page, 'tracked', 'tracked-viewport');
  }

  const report = {
    text,
    overlay,
    annotationLines,
    trackedText,
    measurementRows,
    thumbnails: await thumbnails.evaluateAll(nodes =>
      nodes.map(n => ({ series: n.getAttribute('data-series') ?? '', text: n.innerText }))
    ),
    errors,
    console: consoleLines,
    notes,
    screenshots,
  };
  writeFileSync(join(args.out, 'screen.json'), JSON.stringify(report, null, 1));
} finally {
  await browser.close();
}

async function visibleText(page) {
  // "Show Details" of OHIF's error notice reveals the error itself.
  // (The notice may be gone by then: a notice that cannot be opened is not an error here.)
  const details = page.getByRole('button', { name: 'Show Details' }).first();
  if (await details.isVisible()) await details.click({ timeout: 5_000 }).catch(() => {});
  return page.locator('body').innerText();
}

// The text drawn over the image (SR annotations), one entry per line of each text box.
async function svgLines(page) {
  return page.locator(`${PANE} svg text`).evaluateAll(nodes =>
    nodes.flatMap(n => {
      const spans = [...n.querySelectorAll('tspan')].map(t => t.textContent);
      return spans.length ? spans : [n.textContent];
    })
  );
}

async function shoot(page, pageName, paneName) {
  if (pageName) {
    screenshots[pageName] = `${pageName}.png`;
    await page.screenshot({ path: join(args.out, screenshots[pageName]) });
  }
  screenshots[paneName] = `${paneName}.png`;
  await page.locator(PANE).first().screenshot({ path: join(args.out, screenshots[paneName]) });
}

// Wait for the first of several selectors to be visible: true, or false after `timeout`.
async function waitForAny(page, selectors, timeout = STEP_MS / 2) {
  const waits = selectors.map(s => page.locator(s).first().waitFor({ timeout }));
  return Promise.any(waits).then(
    () => true,
    () => false
  );
}

// Wait until OHIF has fetched and drawn: no request in flight, and the viewport looks the same
// twice in a row (images are decoded and rendered after their requests end).
async function settle(page) {
  await page.waitForLoadState('networkidle');
  const pane = page.locator(PANE).first();
  let previous = null;
  for (let attempt = 0; attempt < 60; attempt++) {
    await page.waitForTimeout(500);
    const current = (await pane.isVisible()) ? await pane.screenshot() : Buffer.alloc(0);
    if (previous && current.equals(previous)) return;
    previous = current;
  }
}
