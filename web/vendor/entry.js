// The CodeMirror 6 modules the preview uses, bundled into one ES module
// (vendor/codemirror.js) by `npm --prefix web run vendor` from the versions
// pinned in web/package-lock.json. The bundle is committed so that the
// `sinew` binary can serve the page without Node; CI rebuilds it and checks
// that it is byte for byte the committed one.
export { EditorState, StateEffect, StateField, Compartment } from '@codemirror/state';
export {
  EditorView,
  keymap,
  lineNumbers,
  highlightActiveLine,
  highlightActiveLineGutter,
  drawSelection,
  Decoration,
} from '@codemirror/view';
export { defaultKeymap, history, historyKeymap, indentWithTab } from '@codemirror/commands';
export {
  syntaxHighlighting,
  defaultHighlightStyle,
  bracketMatching,
  foldGutter,
  foldKeymap,
  indentOnInput,
} from '@codemirror/language';
export { linter, lintGutter, lintKeymap, forceLinting, setDiagnostics } from '@codemirror/lint';
export { searchKeymap, highlightSelectionMatches } from '@codemirror/search';
export { json } from '@codemirror/lang-json';
