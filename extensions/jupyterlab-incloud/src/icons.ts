/**
 * INCloud's icons, drawn like JupyterLab's own (16 px, the theme's icon colour through the jp-icon3 class), so the
 * sidebar tab and the tree follow the light and dark themes.
 */
import { LabIcon } from '@jupyterlab/ui-components';

/** The sidebar tab: a brain outline inside a cloud. */
export const incloudIcon = new LabIcon({
  name: 'incloud:archive',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M19.35 10.04A7.49 7.49 0 0 0 12 4C9.11 4 6.6 5.64 5.35 8.04A5.994 5.994 0 0 0 0 14c0 3.31 2.69 6 6 6h13c2.76 0 5-2.24 5-5 0-2.64-2.05-4.78-4.65-4.96zM19 18H6c-2.21 0-4-1.79-4-4 0-2.05 1.53-3.76 3.56-3.97l1.07-.11.5-.95A5.469 5.469 0 0 1 12 6c2.62 0 4.88 1.86 5.39 4.43l.3 1.5 1.53.11A2.98 2.98 0 0 1 22 15c0 1.65-1.35 3-3 3z"/>
    <path d="M9.2 10.2c-1.2 0-2.1.9-2.1 2 0 .5.2 1 .5 1.3-.3.3-.4.7-.4 1.1 0 1 .8 1.8 1.8 1.8.4 0 .8-.1 1.1-.4.3.3.7.5 1.2.5.4 0 .7-.1.7-.3V10.6c-.3-.3-.7-.5-1.2-.5-.6 0-1.1.3-1.4.7-.1-.4-.2-.6-.2-.6zm5.6 0c1.2 0 2.1.9 2.1 2 0 .5-.2 1-.5 1.3.3.3.4.7.4 1.1 0 1-.8 1.8-1.8 1.8-.4 0-.8-.1-1.1-.4-.3.3-.7.5-1.2.5-.4 0-.7-.1-.7-.3V10.6c.3-.3.7-.5 1.2-.5.6 0 1.1.3 1.4.7.1-.4.2-.6.2-.6z"/>
  </g>
</svg>`
});

/** A session: a calendar day. */
export const sessionIcon = new LabIcon({
  name: 'incloud:session',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <path class="jp-icon3" fill="#616161" d="M19 4h-1V2h-2v2H8V2H6v2H5c-1.1 0-2 .9-2 2v14c0 1.1.9 2 2 2h14c1.1 0 2-.9 2-2V6c0-1.1-.9-2-2-2zm0 16H5V9h14v11zM7 11h5v5H7z"/>
</svg>`
});

/** A series: a stack of slices. */
export const seriesIcon = new LabIcon({
  name: 'incloud:series',
  svgstr: `<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">
  <path class="jp-icon3" fill="#616161" d="M12 3 2 8l10 5 10-5-10-5zm0 12.2L4.2 11.3 2 12.4l10 5 10-5-2.2-1.1L12 15.2zm0 4.4-7.8-3.9L2 16.8l10 5 10-5-2.2-1.1L12 19.6z"/>
</svg>`
});
