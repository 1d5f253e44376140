// What franz-go's consumer reads from a Fetch response's records field, for the gateway's differential tests
// (tests/reference_readers.py), as tests/clients/java/ReadBatches.java does for Kafka's Java consumer:
//
//	readbatches IN OUT
//
// IN holds fields back to back, each a big-endian int32 length and its bytes. For each, OUT gets one line, in
// ReadBatches.java's format: "R" and the records (offset timestamp control key value headers, records separated
// by tabs, bytes in hex, "-" for null, headers name=value joined by "," or "." for none), or "E" and why the
// client would fail. The field goes through kgo.ProcessFetchPartition, the client's own batch reader, with CRC
// validation on and control records kept (the consumer drops those after reading them).
package main

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func field(b []byte) string {
	if b == nil {
		return "-"
	}
	return hex.EncodeToString(b)
}

func read(records []byte, decompressor kgo.Decompressor) (line string) {
	defer func() {
		if r := recover(); r != nil {
			line = "E panic: " + strings.Join(strings.Fields(fmt.Sprint(r)), " ")
		}
	}()
	partition := kmsg.NewFetchResponseTopicPartition()
	partition.RecordBatches = records
	fetched, _ := kgo.ProcessFetchPartition(kgo.ProcessFetchPartitionOpts{KeepControlRecords: true}, &partition,
		decompressor, nil)
	if fetched.Err != nil {
		return "E " + strings.Join(strings.Fields(fetched.Err.Error()), " ")
	}
	out := make([]string, 0, len(fetched.Records))
	for _, r := range fetched.Records {
		control := 0
		if r.Attrs.IsControl() {
			control = 1
		}
		headers := make([]string, 0, len(r.Headers))
		for _, h := range r.Headers {
			headers = append(headers, hex.EncodeToString([]byte(h.Key))+"="+field(h.Value))
		}
		joined := "."
		if len(headers) > 0 {
			joined = strings.Join(headers, ",")
		}
		out = append(out, fmt.Sprintf("%d %d %d %s %s %s", r.Offset, r.Timestamp.UnixMilli(), control, field(r.Key),
			field(r.Value), joined))
	}
	return "R " + strings.Join(out, "\t")
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: readbatches IN OUT")
		os.Exit(2)
	}
	in, err := os.Open(os.Args[1])
	if err != nil {
		panic(err)
	}
	defer in.Close()
	outFile, err := os.Create(os.Args[2])
	if err != nil {
		panic(err)
	}
	out := bufio.NewWriter(outFile)
	src := bufio.NewReader(in)
	decompressor := kgo.DefaultDecompressor()
	var size [4]byte
	for {
		if _, err := io.ReadFull(src, size[:]); err == io.EOF {
			break
		} else if err != nil {
			panic(err)
		}
		records := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(src, records); err != nil {
			panic(err)
		}
		fmt.Fprintln(out, read(records, decompressor))
	}
	if err := out.Flush(); err != nil {
		panic(err)
	}
	if err := outFile.Close(); err != nil {
		panic(err)
	}
}
