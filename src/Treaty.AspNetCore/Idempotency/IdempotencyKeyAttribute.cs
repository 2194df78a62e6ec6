namespace Treaty.AspNetCore.Idempotency;

/// <summary>
/// Makes an endpoint (a controller, an action, or — through
/// <see cref="IdempotencyEndpointConventionBuilderExtensions.WithIdempotencyKey{TBuilder}"/> — a
/// minimal API) honour the <c>Idempotency-Key</c> header: the first request with a key runs and
/// its response is stored; a repeat gets that response again instead of running twice. Needs
/// <see cref="IdempotencyApplicationBuilderExtensions.UseTreatyIdempotency"/> in the pipeline.
/// </summary>
[AttributeUsage(AttributeTargets.Class | AttributeTargets.Method, AllowMultiple = false, Inherited = true)]
public sealed class IdempotencyKeyAttribute : Attribute
{
    /// <summary>
    /// Whether a request without the header is refused (400). When false (the default), such a
    /// request runs normally, without idempotency.
    /// </summary>
    public bool Required { get; set; }
}
