// The dashboard's trends page in Debian's headless Chromium (playwright-core):
//
//   node trends-page.mjs BASE_URL PROJECT ARTIFACT_DIR
//
// BASE_URL is a `patchbay serve` whose store holds PROJECT's series over several weeks.
// Checks that /trends is reachable from the header, that its three plots are drawn by the
// chart library served with the page (uPlot from /assets: a canvas each, PROJECT in their
// legends), that no request left the server, and that the page fits a phone.
// Screenshots go to ARTIFACT_DIR.

import { check, launch } from './common.mjs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, project, artifacts] = process.argv.slice(2);
if (!base || !project || !artifacts) {
  console.error('usage: node trends-page.mjs BASE_URL PROJECT ARTIFACT_DIR');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const elsewhere = [];
  page.on('request', (r) => { if (!r.url().startsWith(base)) elsewhere.push(r.url()); });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(base + '/');
  await page.getByRole('link', { name: 'Trends', exact: true }).click();
  await page.waitForSelector('.uplot canvas', { timeout: 10000 });
  check(page.url().startsWith(base + '/trends'), `the header links to the trends page (${page.url()})`);
  const plots = await page.locator('.uplot').count();
  check(plots === 3, `three plots are drawn (got ${plots})`);
  const canvases = await page.locator('.uplot canvas').count();
  check(canvases >= 3, `each plot has its canvas (${canvases})`);
  const legends = await page.locator('.uplot .u-legend').allTextContents();
  check(legends.length === 3 && legends.every((l) => l.includes(project)), `each legend names ${project}`);
  // Something was drawn: the series plot's canvas is not blank.
  const inked = await page.evaluate(() => {
    const c = document.querySelector('#plot-series canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
    return n;
  });
  check(inked > 500, `the series plot has ink (${inked} pixels)`);
  check(errors.length === 0, `no script error (${errors.join('; ')})`);
  check(elsewhere.length === 0, `nothing is fetched from elsewhere (${elsewhere.join(', ')})`);
  const tables = await page.locator('#slowest tbody tr').count();
  check(tables >= 1, `the slowest tests are listed (${tables})`);
  await page.screenshot({ path: join(artifacts, 'trends.png'), fullPage: true });

  const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await phone.goto(base + '/trends');
  await phone.waitForSelector('.uplot canvas');
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the trends page fits a phone's width (overflow ${overflow}px)`);
  await phone.screenshot({ path: join(artifacts, 'trends-phone.png'), fullPage: true });
  console.log('all trends page checks passed');
} finally {
  await browser.close();
}
