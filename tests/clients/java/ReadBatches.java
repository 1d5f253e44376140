// What Kafka's Java consumer reads from a Fetch response's records field, for the gateway's differential tests
// (tests/reference_readers.py). Run as a single source file on the Kafka jars' classpath:
//
//     java -cp 'lib/*' ReadBatches.java IN OUT
//
// IN holds fields back to back, each a big-endian int32 length and its bytes. For each, OUT gets one line:
//     R <records>      every record, read as the consumer reads it (below), each as
//                      "offset timestamp control key value headers" separated by spaces, records by tabs:
//                      key and value hex or "-" for null, headers "name=value" joined by "," (or "." for none)
//                      with the name the UTF-8 of the String Java decoded (hex) and the value hex or "-";
//     E <reason>       the consumer would raise instead (the exception's class and message, on one line).
//
// As the consumer's fetcher does (CompletedFetch): batches through MemoryRecords, each checked with ensureValid
// (check.crcs, true by default) before its records are read with streamingIterator; a partial batch at the
// end is not returned (as the broker may cut one).
import java.io.DataInputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.PrintWriter;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;

import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.record.MemoryRecords;
import org.apache.kafka.common.record.MutableRecordBatch;
import org.apache.kafka.common.record.Record;
import org.apache.kafka.common.utils.BufferSupplier;
import org.apache.kafka.common.utils.CloseableIterator;

public class ReadBatches {
    private static final char[] HEX = "0123456789abcdef".toCharArray();

    private static void hex(StringBuilder out, ByteBuffer buffer) {
        if (buffer == null) {
            out.append('-');
            return;
        }
        ByteBuffer b = buffer.duplicate();
        while (b.hasRemaining()) {
            int v = b.get() & 0xFF;
            out.append(HEX[v >> 4]).append(HEX[v & 15]);
        }
    }

    private static String read(byte[] field, BufferSupplier supplier) {
        StringBuilder out = new StringBuilder("R ");
        boolean first = true;
        for (MutableRecordBatch batch : MemoryRecords.readableRecords(ByteBuffer.wrap(field)).batches()) {
            batch.ensureValid();
            try (CloseableIterator<Record> records = batch.streamingIterator(supplier)) {
                while (records.hasNext()) {
                    Record record = records.next();
                    if (!first) out.append('\t');
                    first = false;
                    out.append(record.offset()).append(' ').append(record.timestamp()).append(' ')
                       .append(batch.isControlBatch() ? 1 : 0).append(' ');
                    hex(out, record.key());
                    out.append(' ');
                    hex(out, record.value());
                    out.append(' ');
                    Header[] headers = record.headers();
                    for (int i = 0; i < headers.length; i++) {
                        if (i > 0) out.append(',');
                        hex(out, ByteBuffer.wrap(headers[i].key().getBytes(StandardCharsets.UTF_8)));
                        out.append('=');
                        hex(out, headers[i].value() == null ? null : ByteBuffer.wrap(headers[i].value()));
                    }
                    if (headers.length == 0) out.append('.');
                }
            }
        }
        return out.toString();
    }

    public static void main(String[] args) throws IOException {
        BufferSupplier supplier = BufferSupplier.create();
        try (DataInputStream in = new DataInputStream(new FileInputStream(args[0]));
             PrintWriter out = new PrintWriter(Files.newBufferedWriter(Paths.get(args[1])))) {
            while (in.available() > 0) {
                byte[] field = new byte[in.readInt()];
                in.readFully(field);
                String line;
                try {
                    line = read(field, supplier);
                } catch (Exception | StackOverflowError | OutOfMemoryError e) {
                    line = "E " + (e.getClass().getName() + ": " + e.getMessage()).replaceAll("\\s+", " ");
                }
                out.println(line);
            }
        }
    }
}
