package config

import "errors"

// Error is one problem with the spec. It names where the input came from, the
// field and the offending value, so the message is actionable at a boot
// console:
//
//	cmdline: nbdroot="srv:99999/root": port 99999 is out of range 1-65535
//	/etc/nbdroot.toml:12: device.block_size: 3000 is not a power of two between 512 and 4096
type Error struct {
	// Source is "cmdline", "FILE:LINE", "default" or a flag name.
	Source string
	// Field is the TOML key or the command-line argument, with its value
	// when that helps (`nbdroot="srv:99999/root"`).
	Field string
	// Msg says what is wrong with it.
	Msg string
}

// Error formats the error as "SOURCE: FIELD: MSG", leaving out empty parts.
func (e *Error) Error() string {
	prefix := ""
	for _, part := range []string{e.Source, e.Field} {
		if part != "" {
			prefix += part + ": "
		}
	}
	return prefix + e.Msg
}

// IsSpecError reports whether err is, or wraps, at least one *Error.
func IsSpecError(err error) bool {
	var e *Error
	return errors.As(err, &e)
}
