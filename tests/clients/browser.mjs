// Drives Debian's Chromium with playwright-core: opens a page, then
// evaluates each expression given and prints one JSON line per result:
// {"ok":true,"value":…} or {"ok":false,"error":"…"}. The first line is the
// page's own load: {"status":N}.
//
// Usage: node browser.mjs [--map HOST] [--screenshot PNG] URL EXPRESSION...
//   --map HOST        resolve HOST to 127.0.0.1 (a DNS-rebinding attacker's name)
//   --screenshot PNG  after the expressions, save the page as PNG
//   --insecure        accept the test CA's certificate (an https kubegate)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const args = process.argv.slice(2);
const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];
let screenshot = null;
let insecure = false;
for (;;) {
  if (args[0] === '--insecure') {
    insecure = true;
    args.shift();
    continue;
  }
  if (args[0] === '--map') {
    flags.push(`--host-resolver-rules=MAP ${args[1]} 127.0.0.1`);
  } else if (args[0] === '--screenshot') {
    screenshot = args[1];
  } else {
    break;
  }
  args.splice(0, 2);
}
const [url, ...expressions] = args;
const profile = mkdtempSync(join(tmpdir(), 'kubegate-chromium-'));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  args: flags,
  ignoreHTTPSErrors: insecure,
});
try {
  const page = await context.newPage();
  await page.setViewportSize({ width: 1100, height: 720 });
  const response = await page.goto(url);
  console.log(JSON.stringify({ status: response?.status() ?? 0, body: (await response?.text())?.slice(0, 500) }));
  for (const expression of expressions) {
    try {
      const value = await page.evaluate(`(async () => ${expression})()`);
      console.log(JSON.stringify({ ok: true, value }));
    } catch (error) {
      console.log(JSON.stringify({ ok: false, error: String(error.message ?? error).split('\n')[0] }));
    }
  }
  if (screenshot) await page.screenshot({ path: screenshot });
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
