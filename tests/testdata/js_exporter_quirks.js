// One LLM span as a Node agent records it: an answer cut mid-emoji with String.slice (a lone surrogate),
// a score that came out NaN, a counter past int64. Exported once as OTLP/JSON and once as OTLP/protobuf.
const api = require('@opentelemetry/api');
const { NodeTracerProvider, SimpleSpanProcessor } = require('@opentelemetry/sdk-trace-node');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const Json = require('@opentelemetry/exporter-trace-otlp-http').OTLPTraceExporter;
const Proto = require('@opentelemetry/exporter-trace-otlp-proto').OTLPTraceExporter;
const base = process.argv[2];
const provider = new NodeTracerProvider({
  resource: resourceFromAttributes({ 'service.name': 'node-agent' }),
  spanProcessors: [new SimpleSpanProcessor(new Json({ url: base + '/json' })), new SimpleSpanProcessor(new Proto({ url: base + '/proto' }))],
});
const tracer = provider.getTracer('node-agent', '1.0.0');
const answer = 'Your refund is on its way \u{1F389}';
const span = tracer.startSpan('ChatCompletion', { kind: api.SpanKind.CLIENT, attributes: {
  'openinference.span.kind': 'LLM', 'llm.model_name': 'gpt-4o-mini',
  'llm.output_messages.0.message.role': 'assistant',
  'llm.output_messages.0.message.content': answer.slice(0, answer.length - 1),
  'output.value': answer.slice(0, answer.length - 1),
  'eval.score': NaN, 'cache.bytes_served': 2 ** 64, 'llm.token_count.total': 17 } });
span.end();
provider.shutdown();
