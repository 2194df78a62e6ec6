using System.Diagnostics;
using Microsoft.AspNetCore.Http;
using Treaty.AspNetCore.Barrier;

namespace Treaty.AspNetCore.Diagnostics;

/// <summary>
/// The participant kit's traces: a server span <c>treaty.branch {op}</c> around every branch call
/// that <c>MapTreatyBranch</c> or <c>MapTreatyPreparedTransactionBranch</c> handles, a child of the
/// coordinator's client span named by the call's W3C <c>traceparent</c>, so the coordinator's and
/// the participant's spans of one transaction share a trace id. Collect it with
/// <c>AddSource(TreatyParticipantTelemetry.ActivitySourceName)</c>.
/// </summary>
public static class TreatyParticipantTelemetry
{
    /// <summary>The name of the kit's <see cref="ActivitySource"/>.</summary>
    public const string ActivitySourceName = "Treaty.AspNetCore";

    internal static readonly ActivitySource Source = new(ActivitySourceName);

    /// <summary>
    /// Starts the span of one branch call (null when nobody listens); it is tagged with the answer's
    /// status code and barrier decision when the answer starts.
    /// </summary>
    internal static Activity? StartBranch(HttpContext http, BranchCall call)
    {
        if (!Source.HasListeners())
        {
            return null;
        }

        var activity = Source.StartActivity("treaty.branch " + call.Op, ActivityKind.Server, Parent(http.Request));
        if (activity is null)
        {
            return null;
        }

        activity.SetTag("treaty.gid", call.Gid);
        activity.SetTag("treaty.branch", call.Branch);
        activity.SetTag("treaty.op", call.Op);
        if (int.TryParse(http.Request.Headers["Treaty-Attempt"], System.Globalization.CultureInfo.InvariantCulture, out var attempt))
        {
            activity.SetTag("treaty.attempt", attempt);
        }

        http.Response.OnStarting(static state =>
        {
            var (span, response) = ((Activity, HttpResponse))state;
            span.SetTag("http.response.status_code", response.StatusCode);
            if (response.Headers.TryGetValue(TreatyBarrier.OutcomeHeader, out var decision))
            {
                span.SetTag("treaty.barrier", decision.ToString());
            }

            if (response.StatusCode >= 500)
            {
                span.SetStatus(ActivityStatusCode.Error);
            }

            return Task.CompletedTask;
        }, (activity, http.Response));
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
