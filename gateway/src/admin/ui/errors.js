// Loaded first: collects uncaught errors, rejected promises, console.error calls,
// failed script or style loads and Content-Security-Policy violations into
// `document.body.dataset.errors` (messages joined by " | "), so a headless browser
// test can read them from the DOM. Everything is also left on the console.
"use strict";
(function () {
  const seen = [];
  function flush() {
    if (document.body && seen.length > 0) {
      document.body.dataset.errors = seen.join(" | ");
    }
  }
  function record(message) {
    seen.push(String(message).slice(0, 500));
    flush();
  }
  window.addEventListener("error", (e) => {
    if (e.target && e.target !== window && (e.target.src || e.target.href)) {
      record("failed to load " + (e.target.src || e.target.href));
    } else {
      record("uncaught: " + e.message + " at " + e.filename + ":" + e.lineno);
    }
  }, true);
  window.addEventListener("unhandledrejection", (e) => {
    record("unhandled rejection: " + (e.reason && e.reason.stack ? e.reason.stack : e.reason));
  });
  document.addEventListener("securitypolicyviolation", (e) => {
    record("CSP violation: " + e.violatedDirective + " blocked " + e.blockedURI);
  });
  const consoleError = console.error.bind(console);
  console.error = (...args) => {
    record("console.error: " + args.map((a) => (a && a.stack) || String(a)).join(" "));
    consoleError(...args);
  };
  document.addEventListener("DOMContentLoaded", flush);
})();
