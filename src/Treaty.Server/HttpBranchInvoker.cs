using System.Buffers;
using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Security;
using Treaty.Server.Security;

namespace Treaty.Server;

/// <summary>
/// Calls participants over HTTP per the branch call contract: POST a JSON envelope with the
/// Treaty headers and an Idempotency-Key that is the same on every retry of one operation.
/// Every outcome is data: the answer is classified by <see cref="BranchOutcome.FromHttp"/> (2xx
/// success, a definitive 4xx failure, anything else unknown); a timeout or a connection error is
/// unknown.
/// </summary>
internal sealed partial class HttpBranchInvoker : IBranchInvoker, IDisposable
{
    private static readonly MediaTypeHeaderValue JsonContentType = new("application/json") { CharSet = "utf-8" };
    private readonly HttpClient _http;
    private readonly TimeProvider _time;
    private readonly int _maxResultBytes;
    private readonly int _timelineBodyBytes;
    private readonly byte[]? _callbackSecret;
    private readonly ILogger _logger;
    private readonly ParticipantAllowlist _allowlist;
    private readonly ConnectionSlots _slots;

    public HttpBranchInvoker(TreatyServerOptions options, TimeProvider time, ILogger<HttpBranchInvoker> logger, ParticipantAllowlist allowlist)
    {
        _allowlist = allowlist;
        _time = time;
        _logger = logger;
        _maxResultBytes = options.MaxBranchResultBytes;
        _timelineBodyBytes = options.TimelineBodyBytes;
        _callbackSecret = options.CallbackSecret is { } secret ? Encoding.UTF8.GetBytes(secret) : null;
        _slots = new ConnectionSlots(options.MaxConnectionsPerParticipant);
        var handler = new SocketsHttpHandler
        {
            MaxConnectionsPerServer = options.MaxConnectionsPerParticipant,
            PooledConnectionLifetime = TimeSpan.FromMinutes(5),
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(1),
            AllowAutoRedirect = false, // a redirect could point anywhere: follow nothing.
            UseCookies = false,
            ConnectTimeout = TimeSpan.FromSeconds(5),
            UseProxy = false, // a proxy would connect on our behalf, past the address check below.
            ConnectCallback = allowlist.ConnectAsync, // resolves DNS itself; connects to allowed addresses only.
            // The invoker writes traceparent itself (see InvokeAsync). HttpClient leaves a traceparent
            // already on the request alone, but would still add the ambient activity's tracestate and
            // baggage (the submit request's, say); no propagator: only the invoker's header goes out.
            ActivityHeadersPropagator = null,
        };
        _http = new HttpClient(handler) { Timeout = Timeout.InfiniteTimeSpan };
    }

    public async Task<BranchOutcome> InvokeAsync(BranchCall call, CancellationToken cancellationToken)
    {
        // The call's time starts now, also while it waits for a connection to the participant.
        using var timeout = new CancellationTokenSource(call.Timeout, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, cancellationToken);
        var slots = _slots.For(call.Url);
        if (!slots.Wait(0, CancellationToken.None)) // a free slot at once, without a task
        {
            try
            {
                await slots.WaitAsync(linked.Token);
            }
            catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
            {
                return BranchOutcome.Unknown(null, $"no connection to the participant within {call.Timeout.TotalMilliseconds:0} ms (every one of its connections busy)");
            }
        }

        try
        {
            return await CallAsync(call, timeout, linked.Token, cancellationToken);
        }
        finally
        {
            slots.Release();
        }
    }

    private async Task<BranchOutcome> CallAsync(BranchCall call, CancellationTokenSource timeout, CancellationToken linked, CancellationToken cancellationToken)
    {
        // Every call of one transaction shares one trace id (derived from the gid), so a trace
        // follows the whole order across its participants, retries and coordinator restarts.
        var trace = TraceOf(call.Gid);
        using var activity = TreatyTelemetry.Source.StartActivity("treaty.branch " + call.Op, ActivityKind.Client, trace);
        activity?.SetTag("treaty.gid", call.Gid);
        if (call.Branch is not null)
        {
            activity?.SetTag("treaty.branch", call.Branch);
        }

        activity?.SetTag("treaty.op", call.Op);
        activity?.SetTag("treaty.attempt", call.Attempt);

        if (!_allowlist.IsAllowed(call.Url, out var url))
        {
            // Accepted under an older, wider allowlist: never called now; an operator decides.
            return BranchOutcome.Unknown(null, "not called: the URL is outside the participant allowlist");
        }

        try
        {
            var envelope = Envelope(call);
            using var request = new HttpRequestMessage(HttpMethod.Post, url)
            {
                Content = new ReadOnlyMemoryContent(envelope) { Headers = { ContentType = JsonContentType } },
            };
            if (_callbackSecret is not null)
            {
                // Over the exact bytes sent, at the time of this attempt: every retry carries a fresh
                // timestamp (and its own attempt number in the body), so it stays inside the window.
                request.Headers.TryAddWithoutValidation(CallbackSignature.HeaderName, CallbackSignature.Sign(_callbackSecret, envelope.Span, _time.GetUtcNow()));
            }

            request.Headers.Add("Treaty-Gid", call.Gid);
            if (call.Branch is not null)
            {
                request.Headers.Add("Treaty-Branch", call.Branch);
            }

            request.Headers.Add("Treaty-Op", call.Op);
            request.Headers.Add("Treaty-Attempt", call.Attempt.ToString(System.Globalization.CultureInfo.InvariantCulture));
            request.Headers.Add("Idempotency-Key", call.IdempotencyKey);
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
            // Always, and only here: the participant's span is a child of this client span, or, when no
            // listener sampled one, still of this transaction's trace.
            request.Headers.TryAddWithoutValidation("traceparent", Traceparent(activity, trace));

            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, linked);
            var status = (int)response.StatusCode;
            var (body, clipped) = await ReadBodyAsync(response, linked);
            activity?.SetTag("http.response.status_code", status);
            if (status >= 500)
            {
                activity?.SetStatus(ActivityStatusCode.Error);
            }

            var outcome = clipped ? StoredBodyCap.Clipped(status, body!, response.Content.Headers.ContentLength, _maxResultBytes) : BranchOutcome.FromHttp(status, body);
            return outcome with { Body = BodyClip.Clip(body, _timelineBodyBytes) };
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            activity?.SetStatus(ActivityStatusCode.Error, "timeout");
            return BranchOutcome.Unknown(null, $"no answer within {call.Timeout.TotalMilliseconds:0} ms");
        }
        catch (HttpRequestException ex)
        {
            LogCallFailed(_logger, call.Gid, call.Branch ?? "-", call.Op, ex.Message);
            activity?.SetStatus(ActivityStatusCode.Error, ex.Message);
            return BranchOutcome.Unknown(null, ex.Message);
        }
        catch (IOException ex)
        {
            return BranchOutcome.Unknown(null, ex.Message);
        }
    }

    /// <summary>The W3C <c>traceparent</c> of a call: the client span's id, or a fresh span id in the transaction's trace.</summary>
    internal static string Traceparent(Activity? activity, ActivityContext trace) => activity is { IdFormat: ActivityIdFormat.W3C }
        ? $"00-{activity.TraceId.ToHexString()}-{activity.SpanId.ToHexString()}-{(activity.Recorded ? "01" : "00")}"
        : $"00-{trace.TraceId.ToHexString()}-{ActivitySpanId.CreateRandom().ToHexString()}-01";

    internal static ActivityContext TraceOf(string gid)
    {
        Span<byte> hash = stackalloc byte[32];
        System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(gid), hash);
        return new ActivityContext(
            ActivityTraceId.CreateFromBytes(hash[..16]),
            ActivitySpanId.CreateFromBytes(hash.Slice(16, 8)),
            ActivityTraceFlags.Recorded);
    }

    private static ReadOnlyMemory<byte> Envelope(BranchCall call)
    {
        var buffer = new ArrayBufferWriter<byte>(256 + call.PayloadJson.Length);
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            writer.WriteString("gid", call.Gid);
            if (call.Branch is not null)
            {
                writer.WriteString("branch", call.Branch);
            }

            writer.WriteString("op", call.Op);
            writer.WriteNumber("attempt", call.Attempt);
            writer.WritePropertyName("payload");
            writer.WriteRawValue(call.PayloadJson, skipInputValidation: true);
            writer.WriteEndObject();
        }

        // The written bytes themselves: copying them out would cost a payload-sized array per call.
        return buffer.WrittenMemory;
    }

    /// <summary>The body as text, at most <c>_maxResultBytes</c> of it; <c>clipped</c> when there was more.</summary>
    private async Task<(string? Body, bool Clipped)> ReadBodyAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        if (response.Content.Headers.ContentLength == 0)
        {
            return (null, false);
        }

        // Pooled: most answers are small and often chunked (no length), and this runs for every call.
        await using var stream = await response.Content.ReadAsStreamAsync(cancellationToken);
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Min(_maxResultBytes + 1, 4096));
        try
        {
            var read = 0;
            while (read <= _maxResultBytes)
            {
                if (read == buffer.Length)
                {
                    var larger = ArrayPool<byte>.Shared.Rent(Math.Min(buffer.Length * 2, _maxResultBytes + 1));
                    buffer.AsSpan(0, read).CopyTo(larger);
                    ArrayPool<byte>.Shared.Return(buffer);
                    buffer = larger;
                }

                var n = await stream.ReadAsync(buffer.AsMemory(read, Math.Min(buffer.Length, _maxResultBytes + 1) - read), cancellationToken);
                if (n == 0)
                {
                    break;
                }

                read += n;
            }

            // The rest is never read: the connection is dropped with the response.
            return read > _maxResultBytes
                ? (Encoding.UTF8.GetString(buffer, 0, _maxResultBytes), true)
                : (read == 0 ? null : Encoding.UTF8.GetString(buffer, 0, read), false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public void Dispose() => _http.Dispose();

    [LoggerMessage(EventId = 2001, Level = LogLevel.Debug, Message = "Call {Gid}/{Branch}/{Op} failed: {Error}")]
    private static partial void LogCallFailed(ILogger logger, string gid, string branch, string op, string error);
}
