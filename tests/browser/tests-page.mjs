// The dashboard's tests page in Debian's headless Chromium (playwright-core):
//
//   node tests-page.mjs BASE_URL ROW EXPECTED_RATE ARTIFACT_DIR
//
// BASE_URL is a `patchbay serve` whose test ROW (`project/test/arch`) has run, and passed
// only on a re-run in some of its runs. Checks that /tests is reachable from the header, lists
// the test with its flake rate EXPECTED_RATE (as shown, `50.0%`), the flakiest first, and
// that the page fits a phone's width. Screenshots go to ARTIFACT_DIR.

import { check, launch } from './common.mjs';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const [base, row, rate, artifacts] = process.argv.slice(2);
if (!base || !row || !rate || !artifacts) {
  console.error('usage: node tests-page.mjs BASE_URL ROW EXPECTED_RATE ARTIFACT_DIR');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });

const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  await page.goto(base + '/');
  await page.getByRole('link', { name: 'Tests', exact: true }).click();
  await page.waitForSelector('#tests');
  check(page.url() === base + '/tests', `the header links to the tests page (${page.url()})`);
  const line = page.locator(`#tests tr[data-test="${row}"]`);
  check((await line.count()) === 1, `the tests page lists ${row}`);
  const shown = (await line.locator('.flake-rate').textContent()).trim();
  check(shown === rate, `${row} shows a flake rate of ${rate} (got ${shown})`);
  const first = await page.locator('#tests tbody tr').first().getAttribute('data-test');
  check(first === row, `the flakiest test comes first (got ${first})`);
  const flaky = (await line.locator('td').nth(6).textContent()).trim();
  check(flaky !== '0', `its flaky passes are counted (${flaky})`);
  await page.screenshot({ path: join(artifacts, 'tests.png'), fullPage: true });

  const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
  await phone.goto(base + '/tests');
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `the tests page fits a phone's width (overflow ${overflow}px)`);
  await phone.screenshot({ path: join(artifacts, 'tests-phone.png'), fullPage: true });
  console.log('all tests page checks passed');
} finally {
  await browser.close();
}
