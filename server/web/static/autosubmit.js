// Submit a form marked data-autosubmit once the page loads (the OAuth form_post resume page).
document.querySelectorAll("form[data-autosubmit]").forEach((form) => form.submit());
