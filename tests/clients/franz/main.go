// franz: produce N records through a Kafka bootstrap address, then consume them
// back and print each as one JSON line, so a Python test can compare what a
// franz-go client sent and received through the gateway.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

type line struct {
	Partition int32             `json:"partition"`
	Offset    int64             `json:"offset"`
	Key       string            `json:"key"`
	Value     string            `json:"value"`
	Headers   map[string]string `json:"headers"`
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "bootstrap address")
	topic := flag.String("topic", "", "topic")
	count := flag.Int("n", 10000, "records to produce and consume")
	timeout := flag.Duration("timeout", 120*time.Second, "overall timeout")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	producer, err := kgo.NewClient(kgo.SeedBrokers(*brokers), kgo.DefaultProduceTopic(*topic))
	if err != nil {
		fail("producer: %v", err)
	}
	for i := 0; i < *count; i++ {
		record := &kgo.Record{
			Key:     []byte(fmt.Sprintf("key-%d", i)),
			Value:   []byte(fmt.Sprintf("value-%d", i)),
			Headers: []kgo.RecordHeader{{Key: "h", Value: []byte(fmt.Sprintf("hv-%d", i))}},
		}
		producer.Produce(ctx, record, func(_ *kgo.Record, err error) {
			if err != nil {
				fail("produce: %v", err)
			}
		})
	}
	if err := producer.Flush(ctx); err != nil {
		fail("flush: %v", err)
	}
	producer.Close()

	consumer, err := kgo.NewClient(kgo.SeedBrokers(*brokers), kgo.ConsumeTopics(*topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		fail("consumer: %v", err)
	}
	defer consumer.Close()
	out := json.NewEncoder(os.Stdout)
	seen := 0
	for seen < *count {
		fetches := consumer.PollFetches(ctx)
		if ctx.Err() != nil {
			fail("timed out after %d records", seen)
		}
		fetches.EachError(func(t string, p int32, err error) { fail("fetch %s/%d: %v", t, p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			headers := map[string]string{}
			for _, h := range r.Headers {
				headers[h.Key] = string(h.Value)
			}
			_ = out.Encode(line{r.Partition, r.Offset, string(r.Key), string(r.Value), headers})
			seen++
		})
	}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "franz: "+format+"\n", args...)
	os.Exit(1)
}
