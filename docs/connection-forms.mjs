// Screenshots of the provider's three connection forms, taken from a running Airflow UI in headless Chromium.
//
//   npm install --prefix /tmp/shots @sparticuz/chromium puppeteer-core   (outside the repo: nothing downloaded is committed)
//   NODE_PATH=/tmp/shots/node_modules node docs/connection-forms.mjs http://127.0.0.1:8080 docs/images
//
// The api-server must run with this provider installed and `[core] simple_auth_manager_all_admins = True`
// (no login page). One PNG per connection type: the "Add Connection" dialog with every section open.
import { createRequire } from 'node:module';
import path from 'node:path';

const require = createRequire(path.join(process.env.NODE_PATH ?? '.', 'noop.js'));
const chromium = require('@sparticuz/chromium');
const puppeteer = require('puppeteer-core');

const [baseUrl = 'http://127.0.0.1:8080', outDir = 'docs/images'] = process.argv.slice(2);
const FORMS = [
  // [connection type as the form lists it (hook-name), example conn id, file name]
  ['Upland OL Connect', 'olconnect_default', 'connection-form-olconnect.png'],
  ['MeadCo ScriptX.Services', 'scriptx_default', 'connection-form-scriptx.png'],
  ['Bentley iTwin (reality data jobs)', 'itwin_default', 'connection-form-itwin.png'],
];
const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const browser = await puppeteer.launch({
  args: chromium.args,
  executablePath: await chromium.executablePath(),
  headless: true,
  defaultViewport: { width: 1280, height: 2400 },
});
try {
  for (const [typeName, connId, file] of FORMS) {
    const page = await browser.newPage();
    await page.goto(`${baseUrl}/connections`, { waitUntil: 'networkidle0' });
    const [add] = await page.$$('xpath/.//button[contains(., "Add Connection")]');
    await add.click();
    await page.waitForSelector('[role=dialog] input[name=connection_id]');
    await page.type('[role=dialog] input[name=connection_id]', connId);
    await page.type('[role=dialog] input[role=combobox]', typeName);
    await pause(500);
    await page.keyboard.press('Enter');
    await pause(1000);
    // The form's sections are an accordion that keeps one open: shoot the dialog with "Standard Fields" open,
    // then with "Extra Fields" (the vendor's own fields) open, and stack the two shots into one picture.
    const dialog = await page.$('[role=dialog]');
    const standardShot = await dialog.screenshot({ encoding: 'base64' });
    const [extra] = await page.$$('xpath/.//*[@role="dialog"]//button[normalize-space(.)="Extra Fields"]');
    if (!extra) throw new Error(`${typeName}: no "Extra Fields" section in the form`);
    await extra.click();
    await pause(1000);
    const extraShot = await (await page.$('[role=dialog]')).screenshot({ encoding: 'base64' });
    const sheet = await browser.newPage();
    await sheet.setContent(
      `<body style="margin:0"><div id="sheet" style="display:inline-block;background:#fff">` +
        `<img style="display:block" src="data:image/png;base64,${standardShot}">` +
        `<img style="display:block;border-top:2px dashed #999" src="data:image/png;base64,${extraShot}"></div></body>`,
      { waitUntil: 'load' },
    );
    const stacked = await sheet.$('#sheet');
    await stacked.screenshot({ path: path.join(outDir, file) });
    await sheet.close();
    console.log(`${typeName}: ${path.join(outDir, file)}`);
    await page.close();
  }
} finally {
  await browser.close();
}
