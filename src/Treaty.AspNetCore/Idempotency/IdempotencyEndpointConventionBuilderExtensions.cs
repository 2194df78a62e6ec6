using Microsoft.AspNetCore.Builder;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>Opts minimal API endpoints in to idempotency keys.</summary>
public static class IdempotencyEndpointConventionBuilderExtensions
{
    /// <summary>
    /// Makes the endpoint honour the <c>Idempotency-Key</c> header (see <see cref="IdempotencyKeyAttribute"/>).
    /// </summary>
    /// <param name="builder">The endpoint, or a group of endpoints.</param>
    /// <param name="required">Whether a request without the header is refused with 400.</param>
    public static TBuilder WithIdempotencyKey<TBuilder>(this TBuilder builder, bool required = false)
        where TBuilder : IEndpointConventionBuilder
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Add(endpoint => endpoint.Metadata.Add(new IdempotencyKeyAttribute { Required = required }));
        return builder;
    }
}
