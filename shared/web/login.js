// The login page: carries `next` (where to go after signing in) into the form and shows why
// a previous attempt failed. The form itself works without this script.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  document.getElementById("next").value = params.get("next") || "/viewer/";
  const error = params.get("error");
  if (error) document.getElementById("login-error").textContent = error;
})();
