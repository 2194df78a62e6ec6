using System.Diagnostics;
using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Http;
using Treaty.AspNetCore.Barrier;

namespace Treaty.AspNetCore.Diagnostics;

/// <summary>
/// The participant kit's traces: a server span <c>treaty.branch {op}</c> around every branch call
/// that <c>MapTreatyBranch</c> or <c>MapTreatyPreparedTransactionBranch</c> handles, a child of the
/// coordinator's client span named by the call's W3C <c>traceparent</c>, so the coordinator's and
/// the participant's spans of one transaction share a trace id; and a histogram of the calls'
/// durations. Collect them with <c>AddSource(TreatyParticipantTelemetry.ActivitySourceName)</c>
/// and <c>AddMeter(TreatyParticipantTelemetry.MeterName)</c>.
/// </summary>
public static class TreatyParticipantTelemetry
{
    /// <summary>The name of the kit's <see cref="ActivitySource"/>.</summary>
    public const string ActivitySourceName = "Treaty.AspNetCore";

    internal static readonly ActivitySource Source = new(ActivitySourceName);

    /// <summary>The name of the kit's <see cref="Meter"/>.</summary>
    public const string MeterName = "Treaty.AspNetCore";

    internal static readonly Meter Meter = new(MeterName);

    private static readonly Histogram<double> Duration = Meter.CreateHistogram<double>(
        "treaty.participant.branch.duration", unit: "ms",
        description: "Branch calls handled by the kit, from the envelope read to the answer's start, by op, barrier decision and status code");

    /// <summary>
    /// Starts the span of one branch call (null when nobody listens); when the answer starts, the
    /// span is tagged with its status code and barrier decision and the call's duration recorded.
    /// </summary>
    internal static Activity? StartBranch(HttpContext http, BranchCall call)
    {
        var activity = Source.HasListeners()
            ? Source.StartActivity("treaty.branch " + call.Op, ActivityKind.Server, Parent(http.Request))
            : null;
        if (activity is not null)
        {
            activity.SetTag("treaty.gid", call.Gid);
            activity.SetTag("treaty.branch", call.Branch);
            activity.SetTag("treaty.op", call.Op);
            if (int.TryParse(http.Request.Headers["Treaty-Attempt"], System.Globalization.CultureInfo.InvariantCulture, out var attempt))
            {
                activity.SetTag("treaty.attempt", attempt);
            }
        }

        if (activity is null && !Duration.Enabled)
        {
            return null;
        }

        http.Response.OnStarting(static state =>
        {
            var (span, response, op, started) = ((Activity?, HttpResponse, string, long))state;
            var decision = response.Headers.TryGetValue(TreatyBarrier.OutcomeHeader, out var header) ? header.ToString() : "none";
            Duration.Record(Stopwatch.GetElapsedTime(started).TotalMilliseconds, new TagList
            {
                { "op", op }, { "barrier", decision }, { "http.response.status_code", response.StatusCode },
            });
            if (span is not null)
            {
                span.SetTag("http.response.status_code", response.StatusCode);
                if (decision != "none")
                {
                    span.SetTag("treaty.barrier", decision);
                }

                if (response.StatusCode >= 500)
                {
                    span.SetStatus(ActivityStatusCode.Error);
                }
            }

            return Task.CompletedTask;
        }, (activity, http.Response, call.Op, Stopwatch.GetTimestamp()));
        return activity;
    }

    /// <summary>
    /// The coordinator's client span, from <c>traceparent</c>; without one, whatever is current (a
    /// new trace when nothing is). Not the host's request activity even when it is of the same trace:
    /// ASP.NET Core makes one for log correlation alone, and a span whose parent is never exported
    /// would hang loose in the trace. With ASP.NET Core's instrumentation on, the two are siblings.
    /// </summary>
    internal static ActivityContext Parent(HttpRequest request) =>
        ActivityContext.TryParse(request.Headers.TraceParent, request.Headers.TraceState, isRemote: true, out var remote)
            ? remote
            : Activity.Current?.Context ?? default;
}
