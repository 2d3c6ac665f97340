document.addEventListener('click', function (event) {
  var button = event.target.closest('button[data-expand]');
  if (!button) return;
  var mode = button.getAttribute('data-expand');
  var section = document.getElementById(button.getAttribute('data-target'));
  section.querySelectorAll('details.node').forEach(function (node) {
    node.open = mode === 'all' || (mode === 'path' && node.classList.contains('on-path'));
  });
});
