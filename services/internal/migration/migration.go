// Package migration reads the schema migrations of a service: files named
// NNNN_description.sql at the root of an fs.FS (normally an embed.FS),
// numbered from 0001 without gaps. Packages sqlitedb and pgdb apply them,
// each recording the version reached in its own way.
//
// To change a schema, add a file; never edit one that shipped.
package migration

import (
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strconv"
)

// File is one migration.
type File struct {
	// Version is the file's number: 1 for 0001_….sql.
	Version int
	// Name is the file name, for errors.
	Name string
	// SQL is the file's content: one or more statements.
	SQL string
}

var fileName = regexp.MustCompile(`^([0-9]{4})_[a-z0-9_]+\.sql$`)

// Read reads the migration files at the root of fsys, sorted by version,
// and checks that they are numbered 1..n without gaps. Directories are
// skipped; any other file whose name does not look like
// 0001_description.sql is an error.
func Read(fsys fs.FS) ([]File, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var files []File
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		m := fileName.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration %q: name must look like 0001_description.sql", e.Name())
		}
		v, _ := strconv.Atoi(m[1]) // four digits: cannot fail
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		files = append(files, File{Version: v, Name: e.Name(), SQL: string(body)})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Version < files[j].Version })
	for i, f := range files {
		if f.Version != i+1 {
			return nil, fmt.Errorf("migration %s: want version %04d (versions start at 0001 and have no gaps or duplicates)", f.Name, i+1)
		}
	}
	if len(files) == 0 {
		return nil, errors.New("no migrations")
	}
	return files, nil
}
