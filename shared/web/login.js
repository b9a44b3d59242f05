// The login page: carries `next` into the form, shows why a previous attempt failed, and skips
// the form when this browser already has a session (a link opened from another site arrives
// without the SameSite=Strict cookie; this same-origin call carries it).
"use strict";

(async () => {
  const params = new URLSearchParams(location.search);
  const next = params.get("next") || "/viewer/";
  document.getElementById("next").value = next;
  const error = params.get("error");
  if (error) document.getElementById("login-error").textContent = error;
  try {
    const resp = await fetch("/api/session", { headers: { Accept: "application/json" } });
    if (resp.ok && next.startsWith("/") && !next.startsWith("//")) location.replace(next);
  } catch (err) {
    // no session: stay on the form
  }
})();
