// What the page scripts share: a check that prints or fails, and Debian's headless Chromium
// launched as playwright-core drives it (no browser download, nothing fetched from outside).

import { chromium } from 'playwright-core';

export function check(ok, what) {
  if (!ok) throw new Error('FAILED: ' + what);
  console.log('ok: ' + what);
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.PATCHBAY_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // As root in a container Chromium needs --no-sandbox; the rest keeps it off a closed network.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
           '--disable-component-update', '--disable-sync'],
  });
}
