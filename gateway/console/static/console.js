// patgate console: dialogs, copy, type-to-confirm, dependent fields. No inline script
// anywhere (CSP script-src 'self'); every page works with plain forms underneath.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  // Buttons that open a confirmation <dialog> (modal: focus moves in, Escape closes).
  for (const opener of document.querySelectorAll("[data-dialog]")) {
    const dialog = document.getElementById(opener.dataset.dialog);
    if (!dialog) continue;
    opener.addEventListener("click", () => {
      dialog.showModal();
      const first = dialog.querySelector("input:not([type=hidden]), select, button[type=submit]");
      if (first) first.focus();
    });
  }
  for (const closer of document.querySelectorAll("dialog [data-close]")) {
    closer.addEventListener("click", () => closer.closest("dialog").close());
  }
  for (const dialog of document.querySelectorAll("dialog")) {
    dialog.addEventListener("close", () => {
      const opener = document.querySelector(`[data-dialog="${dialog.id}"]`);
      if (opener) opener.focus();
    });
  }

  // The one-time secret: shown as a modal dialog.
  for (const dialog of document.querySelectorAll("dialog[data-modal][open]")) {
    dialog.close();
    dialog.showModal();
    const copy = dialog.querySelector("[data-copy]");
    if (copy) copy.focus();
  }

  // Copy buttons: the Clipboard API where the page is a secure context, else select +
  // execCommand, and always a status message for screen readers.
  for (const button of document.querySelectorAll("[data-copy]")) {
    button.addEventListener("click", async () => {
      const field = document.getElementById(button.dataset.copy);
      const status = document.getElementById("copy-status");
      let copied = false;
      try {
        if (navigator.clipboard && window.isSecureContext) {
          await navigator.clipboard.writeText(field.value);
          copied = true;
        }
      } catch (e) {
        copied = false;
      }
      if (!copied) {
        field.select();
        try { copied = document.execCommand("copy"); } catch (e) { copied = false; }
      }
      button.textContent = copied ? "Copied" : "Copy";
      if (status) status.textContent = copied ? "Copied to the clipboard." : "Select the token and copy it.";
    });
  }

  // Type-to-confirm: the submit button stays disabled until the text matches exactly.
  for (const input of document.querySelectorAll("[data-must-equal]")) {
    const submit = input.form.querySelector("button[type=submit]");
    const check = () => { submit.disabled = input.value.trim() !== input.dataset.mustEqual; };
    input.addEventListener("input", check);
    check();
  }

  // Fields that only matter for one choice of a radio group.
  for (const group of document.querySelectorAll("[data-choices]")) {
    const name = group.dataset.choices;
    const sync = () => {
      const chosen = group.querySelector(`input[name="${name}"]:checked`);
      for (const part of group.querySelectorAll("[data-when]")) {
        const [field, value] = part.dataset.when.split("=");
        part.hidden = field === name && (!chosen || chosen.value !== value);
      }
    };
    group.addEventListener("change", sync);
    sync();
  }

  // A custom expiry date only when "Custom date" is chosen.
  for (const select of document.querySelectorAll("select[data-custom-date]")) {
    const box = document.getElementById(select.dataset.customDate);
    const sync = () => { box.hidden = select.value !== "custom"; };
    select.addEventListener("change", sync);
    sync();
  }

  // One submission per form: a double click must not post twice (the one-time form ids
  // refuse the second anyway; this spares the user the "already submitted" page).
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      setTimeout(() => {
        for (const button of form.querySelectorAll("button[type=submit]")) button.disabled = true;
      }, 0);
    });
  }
});

// Back to a page from the history cache: its buttons work again.
window.addEventListener("pageshow", (event) => {
  if (!event.persisted) return;
  for (const button of document.querySelectorAll("form[method=post] button[type=submit]")) {
    if (!button.form.querySelector("[data-must-equal]")) button.disabled = false;
  }
});
