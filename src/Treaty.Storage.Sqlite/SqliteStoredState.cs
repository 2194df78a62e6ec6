using System.Text;
using Microsoft.Data.Sqlite;
using Treaty.Core.Model;
using Treaty.Core.Serialization;

namespace Treaty.Storage.Sqlite;

/// <summary>Reading a stored state from the SQLite columns.</summary>
internal static class SqliteStoredState
{
    /// <summary>A stored state from its spec_json and state_json columns (either TEXT, as rows were
    /// written before schema 5, or BLOB); a NULL spec_json means state_json holds the whole state.</summary>
    public static TransactionState Read(SqliteDataReader reader, int specOrdinal, int stateOrdinal) =>
        StoredStateCodec.Read(reader.IsDBNull(specOrdinal) ? [] : Bytes(reader, specOrdinal), Bytes(reader, stateOrdinal));

    private static byte[] Bytes(SqliteDataReader reader, int ordinal) =>
        reader.GetFieldType(ordinal) == typeof(string) ? Encoding.UTF8.GetBytes(reader.GetString(ordinal)) : reader.GetFieldValue<byte[]>(ordinal);
}
