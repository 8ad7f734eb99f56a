"""INCloud's clinic uploader: a local program whose interface is a page in the user's browser.

It reads a folder, a zip or a DICOMDIR, de-identifies and refaces the chosen series ON THIS COMPUTER with
``incloud_kernel``'s own de-identification and refacing (imported, never copied), and sends only the result to
the INCloud API's STOW-RS upload route, resumably. Identified data and faces never leave this computer: nothing
in this package may send, log or write outside its work folder any original header value or original UID.
"""
__version__ = "0.1.0"
